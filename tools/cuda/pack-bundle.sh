#!/usr/bin/env bash
# Builds the GPU bundle (tools/cuda/bundle.sh) and packs it into ONE archive of at most 16 MiB,
# small enough to carry to a GPU host with nothing but the NVIDIA driver (>= 580):
#
#   tools/cuda/pack-bundle.sh        # -> bundle/mxgpt-gpu.tar.xz (bundle/ is git-ignored)
#
# The archive holds one directory, mxgpt-gpu/ (the bundle: stripped binaries, scripts, data,
# COMMIT). xz is preferred because every GPU host can unpack it (`tar -xf`); zstd, then gzip are
# the fallbacks when xz is missing (then the archive is bundle/mxgpt-gpu.tar.zst or .tar.gz).
# Exit status 1 when the archive exceeds 16 MiB. CARGO_TARGET_DIR is honoured.
#
# On the GPU host:
#   mkdir -p /tmp/mx && tar -xf bundle/mxgpt-gpu.tar.* -C /tmp/mx && /tmp/mx/mxgpt-gpu/gpu-session.sh OUT
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
name=mxgpt-gpu
limit=$((16 * 1024 * 1024))

bash tools/cuda/bundle.sh "bundle/$name"

if command -v xz >/dev/null; then
    # The ~68 MB binaries share most of their bytes: a 768 MiB dictionary spans eleven of them
    # (xz -9's 64 MiB, one: 14.9 MiB instead of 8.2 at 74bd69d, near the 16 MiB limit). One
    # thread keeps one block, so the dictionary is shared. ~12 min; unpacking needs 768 MiB.
    ext=xz compress=(xz -T1 --lzma2=preset=9,dict=768MiB)
elif command -v zstd >/dev/null; then
    ext=zst compress=(zstd -19 --long=27 -T0 -q)
else
    ext=gz compress=(gzip -9)
fi
archive="bundle/$name.tar.$ext"
rm -f "bundle/$name.tar.xz" "bundle/$name.tar.zst" "bundle/$name.tar.gz" "$archive.tmp"
echo "pack: $archive (${compress[*]})"
# Sorted names put the similar test binaries next to each other; owner 0 for a clean unpack.
tar -C bundle --sort=name --owner=0 --group=0 --numeric-owner -cf - "$name" |
    "${compress[@]}" >"$archive.tmp"
mv "$archive.tmp" "$archive"

size=$(stat -c %s "$archive")
mib=$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')
if ((size > limit)); then
    echo "pack: ERROR: $archive is $size bytes ($mib MiB), over the 16 MiB limit of the GPU loan" >&2
    exit 1
fi
echo "pack: $archive: $size bytes ($mib MiB, limit 16 MiB), commit $(cat "bundle/$name/COMMIT")"
echo "pack: carry it to the GPU host (git-ignored: name it in the device tool's carry argument)"
