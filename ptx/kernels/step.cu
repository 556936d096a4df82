// targets: sm_90a sm_80
//
// The training step's bookkeeping on the device, so that nothing in a step waits for the host
// and the whole step can be captured as a CUDA graph (gpt/src/cuda/step.rs):
//
//   step_loss_accumulate(StepState* st, const float* losses, int n)           grid 1, block 32
//       st->loss_sum += (double)(float)(sum_{i < n} (double)losses[i] / n), the sum in index
//       order: exactly what the trainer computes on the host (Gpt::mean_loss, then the f64 sum
//       over micro batches), so the logged loss does not change. Lane 0 adds, the warp loads.
//   step_finish(StepState* st, float* ring, const float* norm, const StepParams* p)   1 x 1
//       loss = (float)(st->loss_sum / p->micro_batches); ring[2 slot] = loss,
//       ring[2 slot + 1] = norm[0]; st->loss_sum = 0; the clip factor
//       grad_clip / norm if grad_clip > 0 and norm > grad_clip, else 1 (the trainer's formula,
//       the same f32 division); a non-finite loss or norm sets st->halted, and AdamW
//       (adamw_update_multi_dev) skips that step and every later one: the trainer reads the ring
//       and stops "before updating the weights", as it does when it reads the norm itself.
//
// Cost: step_loss_accumulate is one serial f64 chain of n = B*T adds (8192 for GPT-2 at
// B = 8, T = 1024: ~70 K cycles of dependent DADD latency, ~40 us per micro batch; a parallel
// tree would be faster but would change the sum's rounding and so the logged loss). step_finish
// is a single thread. Both are latency, not bandwidth. Harness-tested, ptxas-assembled, not
// timed.
#include "common.cuh"
#include "step.cuh"

extern "C" __global__ void step_loss_accumulate(StepState* st, const float* losses, int n) {
    // The warp loads 32 losses at a time (coalesced); lane 0 adds them in index order.
    double sum = 0.0;
    const int lane = threadIdx.x & 31;
    for (int base = 0; base < n; base += 32) {
        float x = base + lane < n ? losses[base + lane] : 0.0f;
        int m = min(32, n - base);
        for (int k = 0; k < m; k++) {
            float xk = __shfl_sync(0xffffffffu, x, k);
            if (lane == 0) sum += (double)xk;
        }
    }
    if (lane == 0) st->loss_sum += (double)(float)(sum / (double)n);
}

extern "C" __global__ void step_finish(StepState* st, float* ring, const float* norm,
                                       const StepParams* p) {
    const float loss = (float)(st->loss_sum / (double)p->micro_batches);
    const float nrm = norm[0];
    ring[2 * p->slot] = loss;
    ring[2 * p->slot + 1] = nrm;
    st->loss_sum = 0.0;
    const float clip = p->grad_clip;
    st->grad_scale = clip > 0.0f && nrm > clip ? clip / nrm : 1.0f;
    if (!isfinite(loss) || !isfinite(nrm)) st->halted = 1;
}
