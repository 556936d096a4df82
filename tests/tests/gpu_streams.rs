//! Two streams ordered by events (runtime/src/cuda/harness.rs, `Gpu::on_stream`,
//! `Gpu::wait_event`): work split correctly between the main stream and a second one gives the
//! same bits however the streams' work interleaves, and the harness's held-back stream orders
//! expose each missing wait (which the default, eager order cannot: it runs everything in
//! enqueue order). The pattern is the overlapped gradient exchange's: the main stream writes a
//! buffer and records an event; the second stream waits for it, moves the data and sums it
//! (gpt::cuda::dist::rank_order_sum) and records its own event; the main stream waits for that
//! before it reads the sum.

use gpt::cuda::dist::rank_order_sum;
use gpt::cuda::kernels::Ptr;
use runtime::cuda::half::bf16;
use runtime::cuda::{Gpu, Schedule, StreamOrder};
use tests::gpu::*;

const ORDERS: [StreamOrder; 3] = [
    StreamOrder::Eager,
    StreamOrder::MainLate,
    StreamOrder::SideLate,
];

/// Which of the two waits the pattern leaves out (a planted bug kept in the test).
#[derive(Clone, Copy, PartialEq)]
enum Skip {
    Nothing,
    SideWaitsForMain,
    MainWaitsForSide,
}

/// Runs the pattern on a fresh harness in `order`; returns the main stream's copy of the sum.
fn two_streams(order: StreamOrder, skip: Skip, values: &[bf16]) -> Vec<u16> {
    pattern(
        &Gpu::harness_ordered(Schedule::InOrder, order),
        skip,
        values,
    )
}

/// The pattern on `g`.
fn pattern(g: &Gpu, skip: Skip, values: &[bf16]) -> Vec<u16> {
    let n = values.len();
    let src = g.upload(values).unwrap();
    // The "gradients" start as zeros; the main stream's copy is their "backward".
    let grads = g.upload(&vec![bf16::ZERO; n]).unwrap();
    let parts = poisoned::<bf16>(g, 2 * n);
    let sum = poisoned::<bf16>(g, n);
    let result = g.upload(&vec![bf16::ZERO; n]).unwrap();
    let side = g.create_stream().unwrap();
    let (grads_ready, sum_ready) = (g.event().unwrap(), g.event().unwrap());

    g.copy_device(&src, &grads).unwrap();
    g.record(&grads_ready).unwrap();
    g.on_stream(&side, || {
        if skip != Skip::SideWaitsForMain {
            g.wait_event(&grads_ready).unwrap();
        }
        for r in 0..2 {
            // The "exchange": each rank's part is this rank's gradients.
            g.copy_device_at(&grads, 0, &parts, r * n, n).unwrap();
        }
        rank_order_sum(g, Ptr::of(&sum), Ptr::of(&parts), n, 2).unwrap();
        g.record(&sum_ready).unwrap();
    });
    if skip != Skip::MainWaitsForSide {
        g.wait_event(&sum_ready).unwrap();
    }
    g.copy_device(&sum, &result).unwrap();
    bits(&g.download(&result).unwrap())
}

fn values(n: usize) -> Vec<bf16> {
    Rng(0x5EED_0011).vec_bf16(n, 4.0)
}

fn doubled(v: &[bf16]) -> Vec<u16> {
    v.iter()
        .map(|x| bf16::from_f32(x.to_f32() * 2.0).to_bits())
        .collect()
}

#[test]
fn ordered_streams_give_the_same_bits_in_every_order() {
    let v = values(1000);
    for order in ORDERS {
        assert_eq!(
            two_streams(order, Skip::Nothing, &v),
            doubled(&v),
            "{order:?}"
        );
    }
}

/// The same on the test device: on a GPU (`MXGPT_TEST_DEVICE=cuda`) two real streams, large
/// enough that the second stream's work would overlap the main stream's if it did not wait.
#[test]
fn ordered_streams_on_the_test_device() {
    let g = gpu();
    let v = values(if on_gpu(&g) { 1 << 24 } else { 4096 });
    assert!(
        pattern(&g, Skip::Nothing, &v) == doubled(&v),
        "{}",
        g.props().name
    );
}

#[test]
fn a_missing_wait_of_the_second_stream_shows_when_the_main_stream_runs_late() {
    let v = values(1000);
    // Eager cannot see it: everything ran in enqueue order.
    assert_eq!(
        two_streams(StreamOrder::Eager, Skip::SideWaitsForMain, &v),
        doubled(&v)
    );
    // Main late: the second stream read the gradients before the main stream wrote them.
    let got = two_streams(StreamOrder::MainLate, Skip::SideWaitsForMain, &v);
    assert!(
        got.iter().all(|&b| b == 0),
        "the sum of the zeros the gradients started as"
    );
}

#[test]
fn a_missing_wait_of_the_main_stream_shows_when_the_second_stream_runs_late() {
    let v = values(1000);
    assert_eq!(
        two_streams(StreamOrder::Eager, Skip::MainWaitsForSide, &v),
        doubled(&v)
    );
    // Side late: the main stream copied the sum before the second stream computed it.
    let got = two_streams(StreamOrder::SideLate, Skip::MainWaitsForSide, &v);
    assert!(got.iter().all(|&b| b == 0xFFFF), "the sum's NaN poison");
}

#[test]
fn held_back_work_runs_when_the_host_waits_for_it() {
    let v = values(257);
    for order in ORDERS {
        let g = Gpu::harness_ordered(Schedule::InOrder, order);
        let side = g.create_stream().unwrap();
        let src = g.upload(&v).unwrap();
        let dst = poisoned::<bf16>(&g, v.len());
        let mut pinned = g.alloc_pinned::<bf16>(v.len()).unwrap();
        // On the second stream: a copy into pinned memory, read through its event.
        g.on_stream(&side, || {
            g.copy_device(&src, &dst).unwrap();
            g.copy_to_pinned_async(&dst, 0, &mut pinned).unwrap();
        });
        assert_eq!(bits(pinned.host().unwrap()), bits(&v), "{order:?}: pinned");
        // On the main stream: a launch whose input buffer is freed before anything waited
        // (the free runs the queued work first, as cuMemFree waits for the device).
        let parts = g.upload(&[v.clone(), v.clone()].concat()).unwrap();
        let sum = poisoned::<bf16>(&g, v.len());
        rank_order_sum(&g, Ptr::of(&sum), Ptr::of(&parts), v.len(), 2).unwrap();
        drop(parts);
        let e = g.event().unwrap();
        g.record(&e).unwrap();
        e.synchronize().unwrap();
        let mut host = vec![bf16::ZERO; v.len()];
        g.copy_to_host(&sum, &mut host).unwrap();
        assert_eq!(bits(&host), doubled(&v), "{order:?}: sum");
    }
}

#[test]
fn a_wait_on_an_event_never_recorded_does_not_wait() {
    let g = Gpu::harness_ordered(Schedule::InOrder, StreamOrder::MainLate);
    let side = g.create_stream().unwrap();
    let e = g.event().unwrap();
    g.on_stream(&side, || g.wait_event(&e)).unwrap();
    g.synchronize("the test").unwrap();
    assert!(
        e.synchronize().is_err(),
        "synchronize on an event never recorded is an error"
    );
}

/// A held-back launch fails when something forces it; forced by a free (which cannot return
/// an error), the failure is reported by the device's next call, as a GPU reports an
/// asynchronous fault.
#[test]
fn a_held_back_launch_that_fails_is_reported_by_the_next_call() {
    let g = Gpu::harness_ordered(Schedule::InOrder, StreamOrder::MainLate);
    let n = 64usize;
    let out = poisoned::<bf16>(&g, n + 1);
    let inp = g.upload(&vec![bf16::ONE; n + 1]).unwrap();
    let k = g.kernel("gelu", "gelu_forward_vec").unwrap();
    // Vectors of 8 from an odd element: misaligned, which the harness reports when it runs.
    let (o, i) = (Ptr::of(&out).slice(1, n), Ptr::of(&inp).slice(1, n));
    let cfg = runtime::cuda::LaunchConfig::linear(n.div_ceil(8), 256);
    unsafe { g.launch(&k, cfg, &[&o, &i, &n]) }.expect("only queued");
    drop(inp);
    let e = g.download(&out).unwrap_err().to_string();
    assert!(
        e.contains("gelu_forward_vec") && e.contains("not 16-byte aligned"),
        "{e}"
    );
}
