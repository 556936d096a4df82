#!/usr/bin/env bash
# Builds everything a GPU host needs to train, benchmark and run the GPU tests, with the kernels
# embedded, into one directory (default: bundle/) that runs without a Rust toolchain or CUDA
# toolkit: only the NVIDIA driver (>= 580) is needed there.
#
#   tools/cuda/bundle.sh [DIR]
#
# DIR/train_gpt, DIR/bench       launchers (set MXGPT_ROOT=DIR so data/ and perf/ land there)
# DIR/bin/                       the stripped binaries
# DIR/tests/gpu_*                GPU test binaries (tests/tests/gpu_*.rs; cargo test harness: pass
#                                --nocapture, filters); run them with MXGPT_TEST_DEVICE=cuda, or
#                                they run on the host emulator. Harness-only targets (harness,
#                                gpu_schedules) are left out.
# DIR/run-gpu-tests.sh           runs them all on GPU 0; non-zero exit if any fails
# DIR/gpu-session.sh OUT         the whole GPU verification run, time-boxed for a short GPU loan
# DIR/data/                      the prepared Shakespeare splits, when data/ has them
# DIR/COMMIT                     `git describe --always --dirty` of the tree it was built from
#
# CARGO_TARGET_DIR is honoured. tools/cuda/pack-bundle.sh packs a bundle into one small archive.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${1:-bundle}"
[[ -f .toolchain/cuda/env.sh ]] || bash tools/cuda/install-toolchain.sh
# shellcheck disable=SC1091
source .toolchain/cuda/env.sh
target="${CARGO_TARGET_DIR:-$root/target}"

echo "bundle: building train_gpt and bench with the CUDA backend"
cargo build --release -p gpt --bin train_gpt --features cuda
cargo build --release -p tools --bin bench --features cuda
echo "bundle: building the GPU test binaries"
tests_json="$(cargo test --release -p tests --features cuda --no-run --message-format=json)"

rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin" "$out.tmp/tests"
cp "$target/release/train_gpt" "$target/release/bench" "$out.tmp/bin/"
# Each GPU test target's executable, named after the target (gpu_kernels, gpu_gemm, ...); the
# harness-only targets (host emulator self-tests) mean nothing on a GPU and stay out.
python3 -c '
import json, shutil, sys
harness_only = {"gpu_schedules"}
for line in sys.stdin:
    m = json.loads(line)
    name = m.get("target", {}).get("name", "")
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and "test" in m["target"]["kind"]
            and name.startswith("gpu_") and name not in harness_only):
        shutil.copy(m["executable"], sys.argv[1] + "/" + name)
' "$out.tmp/tests" <<<"$tests_json"
ls "$out.tmp/tests"/gpu_* >/dev/null
strip "$out.tmp/bin/"* "$out.tmp/tests/"*

for tool in train_gpt bench; do
    cat >"$out.tmp/$tool" <<LAUNCH
#!/usr/bin/env bash
# Runs the bundled $tool with this directory as the project root (data/, perf/, checkpoints/).
here="\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
export MXGPT_ROOT="\${MXGPT_ROOT:-\$here}"
cd "\$MXGPT_ROOT"
exec "\$here/bin/$tool" "\$@"
LAUNCH
    chmod +x "$out.tmp/$tool"
done
cat >"$out.tmp/run-gpu-tests.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every bundled GPU test binary on GPU 0 (arguments go to each, e.g. --nocapture or a name
# filter). MXGPT_CUDA_SYNC=1 (the default here) pins asynchronous faults on the kernel that
# caused them.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MXGPT_TEST_DEVICE=cuda MXGPT_CUDA_SYNC="${MXGPT_CUDA_SYNC:-1}"
status=0
for t in "$here"/tests/gpu_*; do
    echo "== $(basename "$t")"
    "$t" --test-threads=1 "$@" || status=1
done
exit $status
RUN
chmod +x "$out.tmp/run-gpu-tests.sh"
cp tools/cuda/gpu-session.sh "$out.tmp/"
# The PyTorch side of the side-by-side comparison (the GPU host has PyTorch).
mkdir -p "$out.tmp/perf" && cp perf/torch_reference.py "$out.tmp/perf/"
if compgen -G "data/shakespeare_*" >/dev/null; then
    mkdir -p "$out.tmp/data" && cp data/shakespeare_* "$out.tmp/data/"
fi
git describe --always --dirty >"$out.tmp/COMMIT" 2>/dev/null || echo unknown >"$out.tmp/COMMIT"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "bundle: $out ($(du -sh "$out" | cut -f1), commit $(cat "$out/COMMIT"), tests: $(cd "$out/tests" && echo gpu_*))"
echo "bundle: on the GPU host: $out/gpu-session.sh OUT, $out/run-gpu-tests.sh, $out/train_gpt --device cuda ..., $out/bench --device cuda ..."
