#!/usr/bin/env bash
# The GPU verification run, for a GPU host holding a bundle (tools/cuda/bundle.sh): the GPU tests,
# the kernel tests under compute-sanitizer memcheck and racecheck, a 124m training run on
# Shakespeare, and the step benchmarks for 124m and 345m. Everything lands in OUT (default
# ./gpu-session-out): logs, JSON, a summary. Each stage's exit status is recorded; the script goes
# on after a failure so that one run shows everything.
#
#   BUNDLE/gpu-session.sh [OUT] [--quick]      (--quick: 20 training steps, fewer reps)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-gpu-session-out}"
quick="${2:-}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
steps=300 reps=10
[[ "$quick" == "--quick" ]] && steps=20 reps=3
summary="$out/summary.txt"
: >"$summary"
stage() { # name, command...
    local name="$1"; shift
    local t0=$SECONDS
    echo "== $name: $*" | tee -a "$summary"
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc, $((SECONDS - t0)) s" | tee -a "$summary"
    tail -3 "$out/$name.log" | sed 's/^/   | /' >>"$summary"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/gpu.csv" 2>&1
echo "commit $(cat "$here/COMMIT" 2>/dev/null)" >>"$summary"
cat "$out/gpu.csv" >>"$summary"

for t in "$here"/tests/gpu_*; do
    stage "test-$(basename "$t")" env MXGPT_CUDA_SYNC=1 "$t" --test-threads=1
done
if command -v compute-sanitizer >/dev/null; then
    for t in "$here"/tests/gpu_*; do
        [[ "$(basename "$t")" == gpu_train ]] && continue
        stage "memcheck-$(basename "$t")" compute-sanitizer --tool memcheck --error-exitcode 9 "$t" --test-threads=1
        stage "racecheck-$(basename "$t")" compute-sanitizer --tool racecheck --error-exitcode 9 "$t" --test-threads=1
    done
fi
stage train-124m "$here/train_gpt" --device cuda --model 124m --backward bf16 --batch 8 --seq 1024 \
    --steps "$steps" --eval-every 50 --log-json "$out/train-124m.jsonl" --checkpoint-every 0
stage bench-124m "$here/bench" --device cuda --suite step --model 124m --batch 8 --seq 1024 \
    --backward all --reps "$reps" --out "$out/results"
stage bench-345m "$here/bench" --device cuda --suite step --model 345m --batch 8 --seq 1024 \
    --backward all --reps "$reps" --out "$out/results"
echo "done: $out" | tee -a "$summary"
