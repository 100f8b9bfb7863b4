#!/usr/bin/env bash
# Packs Hippo's GPU benchmarks for a Linux x86-64 machine with an NVIDIA GPU (CUDA 13 driver) that
# has Python 3.12 with the CUDA 13 runtime wheels (nvidia-cublas, -cudnn-cu13, -cufft, -cusolver,
# -cuda-nvrtc, -nccl-cu13, as a CUDA build of PyTorch brings them) but no Go, no network and no
# checkout: a hippo binary built with the cuda tag, libmlx.so with its headers and libraries from
# the pinned mlx-cuda-13 wheel, the mlx and mlx-lm wheels (the bench engine peer), the 4-bit
# SmolLM2-135M-Instruct, the shipped DFlash and model drafters, and run.sh. The tar is split into
# parts of PART_MB megabytes (default 60) for links that carry files in pieces.
#
#   just gpu-bundle [OUT_DIR] [PART_MB]          (here; or deploy/gpu/bundle.sh after `just build`)
#   cat hippo-gpu.tar.* | tar xf - && cd hippo-gpu && ./run.sh [STEP ...]   (there)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: deploy/gpu/bundle.sh OUT_DIR [PART_MB]}
part=${2:-60}
pin() { sed -n "s/^$1==\([^ ;]*\).*/\1/p" requirements-cuda.txt; }
gguf=.cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -d models/smollm2-135m ]; then
  [ -s "$gguf" ] || { echo "bundle: $gguf is missing: run \`just setup\` first" >&2; exit 1; }
  ./bin/hippo convert "$gguf" --out models/smollm2-135m
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
b=$work/hippo-gpu
mkdir -p "$b/bin" "$b/models" "$b/bench/peers" "$b/engines/spec/testdata" "$b/wheels" "$b/mlx"
.venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_35_x86_64 -d "$work/dl" \
  "mlx-cuda-13==$(pin mlx-cuda-13)" "mlx==$(pin mlx)" "mlx-lm==$(pin mlx-lm)"
(cd "$work/dl" && unzip -q mlx_cuda_13-*.whl 'mlx/lib/*' 'mlx/include/*' 'mlx_cuda_13.libs/*')
strip --strip-unneeded "$work/dl/mlx/lib/libmlx.so"
mv "$work/dl/mlx/lib" "$work/dl/mlx/include" "$b/mlx/"
mv "$work/dl/mlx_cuda_13.libs" "$b/"
mv "$work/dl/mlx-"*.whl "$work/dl/mlx_lm-"*.whl "$b/wheels/"
# The cuda tag leaves OpenBLAS out of the link; the binary finds libmlx.so through LD_LIBRARY_PATH.
GOFLAGS=-tags=cuda go build -trimpath -ldflags "-s -w" -o "$b/bin/hippo" ./cmd/hippo
cp -r models/smollm2-135m "$b/models/"
cp -r engines/spec/testdata/dflash-smollm2 engines/spec/testdata/ardraft-smollm2 "$b/engines/spec/testdata/"
cp bench/peers/*.py "$b/bench/peers/"
cp deploy/gpu/run.sh deploy/gpu/verifycost.py "$b/"
mkdir -p "$out"
rm -f "$out"/hippo-gpu.tar.*
(cd "$work" && tar cf - hippo-gpu | xz -T0 -6) | split -b "${part}000000" -d - "$out/hippo-gpu.tar."
ls -l "$out"/hippo-gpu.tar.*
