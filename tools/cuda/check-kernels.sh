#!/usr/bin/env bash
# Assembles every kernel module in ptx/kernels for each of its targets with
# `ptxas -v --warn-on-spills` and prints registers / shared memory / spills per kernel.
# Exits non-zero on any compile error, any spill, or ptxas warning C7510/C7511 (wgmma serialized).
# Needs the toolchain: tools/cuda/install-toolchain.sh (this script sources its env file).
# The nvcc flags are those of ptx/build.rs (-fmad=false included).
# Nothing here runs a kernel: it is a static check, valid on a machine without a GPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ENV="${MXGPT_CUDA_TOOLCHAIN:-$ROOT/.toolchain/cuda}/env.sh"
if [[ -z "${MXGPT_PTXAS:-}" ]]; then
  [[ -f "$ENV" ]] || { echo "check-kernels: $ENV missing; run tools/cuda/install-toolchain.sh" >&2; exit 2; }
  # shellcheck disable=SC1090
  source "$ENV"
fi
NVCC="${MXGPT_NVCC:-nvcc}"
PTXAS="${MXGPT_PTXAS:-ptxas}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

status=0
printf '%-14s %-8s %-34s %5s %8s %8s %6s\n' module target kernel regs smem_B stack_B spillB
for src in "$ROOT"/ptx/kernels/*.cu "$ROOT"/ptx/kernels/*.ptx; do
  [[ -e "$src" ]] || continue
  name="$(basename "${src%.*}")"
  targets="$(sed -n 's#^[[:space:]]*// targets:##p' "$src" | head -1)"
  [[ -n "${targets// }" ]] || targets="sm_90a"
  for target in $targets; do
    ptx="$WORK/$name.$target.ptx"
    if [[ "$src" == *.cu ]]; then
      if ! "$NVCC" -ptx -O3 -std=c++17 -lineinfo -fmad=false --Werror all-warnings -arch="$target" -o "$ptx" "$src" 2>"$WORK/nvcc.log"; then
        echo "FAIL $name $target: nvcc:"; cat "$WORK/nvcc.log"; status=1; continue
      fi
    else
      cp "$src" "$ptx"
    fi
    log="$WORK/$name.$target.log"
    if ! "$PTXAS" -v --warn-on-spills -arch="$target" -o /dev/null "$ptx" >"$log" 2>&1; then
      echo "FAIL $name $target: ptxas:"; cat "$log"; status=1; continue
    fi
    # ptxas -v prints, per entry: "Compiling entry function 'k' for 'sm_90a'", then
    # "N bytes stack frame, S bytes spill stores, L bytes spill loads", then
    # "Used R registers, used B barriers[, X bytes smem][, Y bytes cmem[0]]".
    awk -v mod="$name" -v tgt="$target" '
      /Compiling entry function/ { match($0, /function .[^'"'"']*/); k = substr($0, RSTART + 10, RLENGTH - 10); smem = 0; stack = 0; spill = 0 }
      /bytes stack frame/ { stack = $1; spill = $5 + $9 }
      /Used [0-9]+ registers/ {
        regs = $5; smem = 0
        if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11) + 0
        printf "%-14s %-8s %-34s %5s %8s %8s %6s\n", mod, tgt, k, regs, smem, stack, spill
        if (spill > 0) bad = 1
      }
      END { exit bad }' "$log" || { echo "FAIL $name $target: register spills (see above)"; status=1; }
    if grep -E 'C751[01]|[Ww]arning' "$log" >/dev/null; then
      echo "FAIL $name $target: ptxas warnings:"; grep -E 'C751[01]|[Ww]arning' "$log"; status=1
    fi
  done
done
if [[ $status -ne 0 ]]; then echo "check-kernels: FAILED" >&2; else echo "check-kernels: ok"; fi
exit $status
