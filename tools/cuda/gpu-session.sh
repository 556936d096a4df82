#!/usr/bin/env bash
# The GPU verification run, sized for a short GPU loan (one command of at most 10 minutes, a few
# result files). Runs from an unpacked bundle (tools/cuda/pack-bundle.sh) on a host with the
# NVIDIA driver (>= 580); compute-sanitizer is used when present. Nothing else is needed.
#
#   BUNDLE/gpu-session.sh OUT [core|extra]
#
# core (the default), stages in order of value, each under `timeout` with a budget in seconds:
#   1. env             15  nvidia-smi, driver, compute capability, sanitizer version, CPU, memory
#   2. test-gpu_*     310  each GPU test binary on GPU 0 (MXGPT_TEST_DEVICE=cuda, MXGPT_CUDA_SYNC=1,
#                          --test-threads=1); its own budget each (TEST_BUDGETS below). A binary
#                          that hit a sticky fault (illegal address, launch failure: every later
#                          test in that process fails with it) runs once more, skipping the
#                          first failed test, so one fault does not hide the rest
#   3. train-124m      50  100 steps of 124m with --backward mxfp4 on Shakespeare, --log-json
#                          (the headline command, before the benchmarks in case time runs out)
#   4. bench-step      55  bench --suite step, 124m B=8 T=1024, --backward all (bf16 + MXFP4 modes;
#                          a mode the GPU cannot run is recorded as an error in the JSON)
#   5. bench-kernels   40  bench --suite kernels, 124m at B=8 T=1024, against measured ceilings
#                          (every kernel, the MXFP4 quantize kernels and both MX GEMM paths)
#   6. torch-ref       45  perf/torch_reference.py: PyTorch fake-quant MXFP4 vs BF16, per backward
#                          GEMM and per 124m step, side by side with stage 4
#   7. memcheck        35  compute-sanitizer memcheck, then racecheck, on the kernel tests, one
#      racecheck       30  binary after the other until the budget is spent
# The budgets are ceilings (they add up to more than the deadline); the tests take a few
# seconds each on a GPU, so the deadline cuts only stages behind a hang.
# extra (a second, shorter loan command when device time is left; under 4 minutes):
#   1. env             15
#   2. bench-step      80  345m B=8 T=1024, bf16 and mxfp4 (the MXFP4 step overhead at 345m)
#   3. bench-step-int8 40  124m, bf16 and mxfp4 with --mx-gemm int8 (the exact path's cost)
#   4. train-124m      70  100 steps of 124m bf16: the loss curve beside core's mxfp4 run
# No stage runs past the part's deadline (core 465 s, extra 225 s after the start; a stage with
# under 3 s left is skipped), so core stays under 8 minutes and extra under 4. A stage that times
# out is recorded (exit 124) and the run goes on.
#
# OUT receives at most 6 files (no subfolders):
#   summary.txt          per stage: command, exit status, seconds, last lines, failures
#   logs.tar.gz          every log (and the bench and training JSON), refreshed after every stage,
#                        so that a run killed at the time limit still returns its evidence
#   bench-kernels.json   core stage 5 (when written); bench-step.json: core stage 4 / extra stage 2
#   torch-ref.json       core stage 6; extra: bench-step-int8.json
#   train-124m.jsonl     the JSON-lines log of the training stage
# (A 7th, logs.tar.gz.tmp, appears only if the run is killed while logs.tar.gz is being
# refreshed; the loan returns up to 8 files, so that evidence still comes back.)
# Every result records the bundle's commit (MXGPT_COMMIT, from BUNDLE/COMMIT).
# Exit status: 0 when every stage passed, 1 otherwise.
#
# For a dry run: MXGPT_SESSION_SCALE=PERCENT scales every budget (default 100),
# MXGPT_SESSION_DEADLINE=SECONDS moves the deadline (default 465).
#
# Not `set -e`: a failing stage is recorded and the run goes on.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: gpu-session.sh OUT [core|extra]}"
part="${2:-core}"
[[ "$part" == core || "$part" == extra ]] || { echo "gpu-session.sh: part '$part': expected core or extra" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
scale="${MXGPT_SESSION_SCALE:-100}"
default_deadline=465
[[ "$part" == extra ]] && default_deadline=225
deadline="${MXGPT_SESSION_DEADLINE:-$default_deadline}"
commit="$(head -n 1 "$here/COMMIT" 2>/dev/null || echo unknown)"
export MXGPT_COMMIT="$commit" # bench and train_gpt record it (there is no git checkout here)
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-session.XXXXXX")"
logs="$work/logs" # everything that goes into logs.tar.gz
mkdir -p "$logs"
summary="$out/summary.txt"
failed=0
SECONDS=0

# Test binaries in order of value, with their budgets; a gpu_* binary not listed runs after
# these, with 15 s. gpu_mpi needs mpirun and the `mpi` feature: it is not run here.
TEST_ORDER=(gpu_kernels gpu_layernorm gpu_gemm gpu_attention gpu_classifier gpu_mx_quantize gpu_mx_gemm gpu_train
    gpu_step gpu_fp8 gpu_nvfp4 gpu_dist gpu_streams gpu_nccl gpu_mx_tcgen05)
declare -A TEST_BUDGETS=([gpu_kernels]=20 [gpu_layernorm]=15 [gpu_gemm]=25 [gpu_attention]=20
    [gpu_classifier]=15 [gpu_mx_quantize]=15 [gpu_mx_gemm]=20 [gpu_train]=35 [gpu_step]=60
    [gpu_fp8]=15 [gpu_nvfp4]=15 [gpu_dist]=15 [gpu_streams]=10 [gpu_nccl]=20 [gpu_mx_tcgen05]=10)
SKIP_TESTS=" gpu_mpi "
MEMCHECK_ORDER=(gpu_kernels gpu_layernorm gpu_classifier gpu_mx_quantize gpu_attention gpu_gemm gpu_mx_gemm)
RACECHECK_ORDER=(gpu_layernorm gpu_attention gpu_classifier gpu_gemm gpu_mx_quantize gpu_mx_gemm gpu_kernels)

# The tests on GPU 0; MXGPT_CUDA_SYNC=1 (a sync after every launch pins an asynchronous fault on
# its kernel) only for the tests and sanitizers, not for the benchmarks and the training run.
export MXGPT_TEST_DEVICE=cuda
sync=(env MXGPT_CUDA_SYNC=1)
# The kernels are embedded as SASS for their targets and as PTX; a GPU with no matching SASS
# JIT-compiles the PTX at module load: a large driver cache lets later processes reuse it.
export CUDA_CACHE_MAXSIZE=4294967296

note() { echo "$*" | tee -a "$summary"; }

pack_logs() {
    cp "$summary" "$logs/"
    tar -czf "$out/logs.tar.gz.tmp" -C "$work" logs && mv -f "$out/logs.tar.gz.tmp" "$out/logs.tar.gz"
}

# stage NAME BUDGET_S TAIL_LINES COMMAND...: runs COMMAND under timeout into logs/NAME.log and
# records it in the summary.
stage() {
    local name="$1" budget="$2" lines="$3"
    shift 3
    local limit=$((budget * scale / 100)) left=$((deadline - SECONDS - 5))
    ((limit >= 1)) || limit=1
    ((limit <= left)) || limit=$left
    local shown="$*"
    shown="${shown//"$here"/BUNDLE}"
    shown="${shown//"$work"/WORK}"
    note "== $name (budget $budget s, limit $limit s, at $SECONDS s): $shown"
    if ((left < 3)); then
        note "   SKIPPED: the session deadline ($deadline s) is reached"
        failed=1
        return
    fi
    local t0=$SECONDS rc=0
    timeout -k 5 "$limit" "$@" >"$logs/$name.log" 2>&1 || rc=$?
    if ((rc == 124 || rc == 137)); then
        note "   TIMEOUT after $limit s (exit $rc), $((SECONDS - t0)) s"
    else
        note "   exit $rc, $((SECONDS - t0)) s"
    fi
    ((rc == 0)) || failed=1
    # failed tests by name, then the first distinct errors (a panic's message follows its
    # "panicked at" line)
    local failures
    failures="$(failed_tests "$logs/$name.log" | head -n 12 | paste -sd ' ')"
    [[ -z "$failures" ]] || echo "   failed: $failures" | cut -c1-600 >>"$summary"
    grep -E -A1 'panicked at|ERROR SUMMARY: [1-9]|^========= (Invalid|Error|Program hit)|^error|^Error' "$logs/$name.log" |
        grep -vE 'panicked at|^--$' | awk '!seen[$0]++' | head -n 4 | cut -c1-300 |
        sed 's/^/   ! /' >>"$summary"
    tail -n "$lines" "$logs/$name.log" | cut -c1-300 | sed 's/^/   | /' >>"$summary"
    pack_logs
}

# The newest JSON in DIR, as OUT/NAME (its commit is the bundle's: MXGPT_COMMIT above).
copy_json() {
    local dir="$1" name="$2" newest="" f
    for f in "$dir"/*.json; do
        [[ -f "$f" && (-z "$newest" || "$f" -nt "$newest") ]] && newest="$f"
    done
    if [[ -n "$newest" ]]; then
        cp "$newest" "$out/$name"
        note "   -> $name"
    fi
}

# The names of the tests a test binary's log reports as failed, one per line.
failed_tests() {
    sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$1"
}

# The bundled test binaries named in ORDER (that exist), then any other gpu_* binary.
tests_in_order() {
    local n t
    for n in "$@"; do
        [[ -x "$here/tests/$n" ]] && echo "$here/tests/$n"
    done
    for t in "$here"/tests/gpu_*; do
        n="$(basename "$t")"
        [[ " $* " == *" $n "* || "$SKIP_TESTS" == *" $n "* || ! -x "$t" ]] || echo "$t"
    done
}

: >"$summary"
note "mxgpt GPU session ($part): commit $commit, started $(date -u +%FT%TZ) on $(uname -n)"
note "budgets at $scale%, deadline $deadline s; bundle $here (BUNDLE), logs $work (WORK)"

# 1. Environment facts.
cat >"$work/env.sh" <<'SH'
echo "commit: $1"; uname -srm; echo "cpus: $(nproc)"; free -g | head -n 2
for s in compute-sanitizer ncu; do echo "$s: $(command -v "$s" || echo not found)"; done
nvidia-smi
nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total,clocks.max.sm,power.limit,mig.mode.current --format=csv
# why a binary might not start: the C library, the driver libraries, unresolved links
ldd --version | head -n 1; ldconfig -p | grep -E 'libcuda\.so|libnvidia-ml\.so'
ldd "$2/train_gpt" | grep -i 'not found' || echo "train_gpt: every shared library found"
SH
stage env 15 3 bash "$work/env.sh" "$commit" "$here"

# NCCL for gpu_nccl (1 rank): the loan has no pip, but PyTorch's wheels bring libnccl.
if [[ -z "${MXGPT_NCCL_LIB:-}" ]]; then
    nccl="$(python3 -c 'import glob, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
hits = [p for d in dirs for p in sorted(glob.glob(d + "/nvidia/*/lib/libnccl.so*"))]
print(hits[0] if hits else "")' 2>/dev/null || true)"
    [[ -n "$nccl" ]] && export MXGPT_NCCL_LIB="$nccl"
fi
note "NCCL: ${MXGPT_NCCL_LIB:-not found in the Python site-packages (gpu_nccl then fails, naming the paths tried)}"

if [[ "$part" == core ]]; then
    # 2. The GPU kernel tests.
    while read -r t; do
        n="$(basename "$t")"
        stage "test-$n" "${TEST_BUDGETS[$n]:-15}" 3 "${sync[@]}" "$t" --test-threads=1
        # A sticky fault poisons the process's context: every later test fails with it. Run the
        # binary once more without the first failed test, to see the others' own results.
        first="$(failed_tests "$logs/test-$n.log" | head -n 1)"
        if [[ -n "$first" ]] && grep -qE 'ILLEGAL_ADDRESS|LAUNCH_FAILED|MISALIGNED_ADDRESS|ILLEGAL_INSTRUCTION' "$logs/test-$n.log"; then
            stage "test-$n-rerun" "${TEST_BUDGETS[$n]:-15}" 3 "${sync[@]}" "$t" --test-threads=1 --skip "$first"
        fi
    done < <(tests_in_order "${TEST_ORDER[@]}")

    # 3. A short MXFP4 training run (the headline mode), before the benchmarks.
    stage train-124m 50 4 "$here/train_gpt" --device cuda --model 124m --backward mxfp4 \
        --batch 8 --seq 1024 --steps 100 --eval-every 50 --eval-batches 5 \
        --log-json "$logs/train-124m.jsonl"
    if [[ -f "$logs/train-124m.jsonl" ]]; then
        cp "$logs/train-124m.jsonl" "$out/" && note "   -> train-124m.jsonl"
    fi

    # 4. Step benchmark, 124m, every backward mode.
    stage bench-step 55 8 "$here/bench" --device cuda --suite step --model 124m --batch 8 \
        --seq 1024 --backward all --warmup 1 --reps 5 --min-time 0 --out "$logs/bench-step"
    copy_json "$logs/bench-step" bench-step.json

    # 5. Kernel benchmark with the GPU's measured ceilings (copy bandwidth, BF16 GEMM).
    stage bench-kernels 40 6 "$here/bench" --device cuda --suite kernels --model 124m --batch 8 \
        --seq 1024 --warmup 3 --reps 20 --out "$logs/bench-kernels"
    copy_json "$logs/bench-kernels" bench-kernels.json

    # 6. The official recipe's approach in PyTorch, same GPU, same shapes.
    stage torch-ref 45 12 python3 "$here/perf/torch_reference.py" --model 124m --batch 8 \
        --seq 1024 --warmup 2 --reps 5 --out "$logs/torch-ref"
    copy_json "$logs/torch-ref" torch-ref.json

    # 7. compute-sanitizer on the kernel tests, as many binaries as the budget allows.
    sanitizer="$(command -v compute-sanitizer)"
    for s in /usr/local/cuda*/bin/compute-sanitizer; do
        [[ -n "$sanitizer" || ! -x "$s" ]] || sanitizer="$s"
    done
    cat >"$work/sanitize.sh" <<'SH'
san=$1 tool=$2; shift 2; rc=0
for t in "$@"; do
    echo "== $tool $(basename "$t")"
    r=0; "$san" --tool "$tool" --error-exitcode 9 "$t" --test-threads=1 || r=$?
    echo "== $tool $(basename "$t"): exit $r"; [ "$r" -eq 0 ] || rc=$r
done
exit $rc
SH
    if [[ -n "$sanitizer" ]]; then
        mapfile -t mem < <(tests_in_order "${MEMCHECK_ORDER[@]}" | grep -v '/gpu_train$')
        mapfile -t race < <(tests_in_order "${RACECHECK_ORDER[@]}" | grep -v '/gpu_train$')
        stage memcheck 35 4 "${sync[@]}" bash "$work/sanitize.sh" "$sanitizer" memcheck "${mem[@]}"
        stage racecheck 30 4 "${sync[@]}" bash "$work/sanitize.sh" "$sanitizer" racecheck "${race[@]}"
    else
        note "== memcheck, racecheck: SKIPPED, compute-sanitizer not found"
    fi
else
    # extra 2. The MXFP4 step overhead at 345m.
    stage bench-step 80 8 "$here/bench" --device cuda --suite step --model 345m --batch 8 \
        --seq 1024 --backward bf16,mxfp4 --warmup 1 --reps 5 --min-time 0 --out "$logs/bench-step"
    copy_json "$logs/bench-step" bench-step.json

    # extra 3. The exact integer path's cost at 124m.
    stage bench-step-int8 40 6 "$here/bench" --device cuda --suite step --model 124m --batch 8 \
        --seq 1024 --backward bf16,mxfp4 --mx-gemm int8 --warmup 1 --reps 5 --min-time 0 \
        --out "$logs/bench-step-int8"
    copy_json "$logs/bench-step-int8" bench-step-int8.json

    # extra 4. The BF16 loss curve to set beside core's MXFP4 run.
    stage train-124m 70 4 "$here/train_gpt" --device cuda --model 124m --backward bf16 \
        --batch 8 --seq 1024 --steps 100 --eval-every 50 --eval-batches 5 \
        --log-json "$logs/train-124m.jsonl"
    if [[ -f "$logs/train-124m.jsonl" ]]; then
        cp "$logs/train-124m.jsonl" "$out/" && note "   -> train-124m.jsonl"
    fi
fi

note "done in $SECONDS s: $([[ $failed == 0 ]] && echo 'every stage passed' || echo 'some stages FAILED')"
pack_logs
exit "$failed"
