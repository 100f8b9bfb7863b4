#!/usr/bin/env bash
# Runs Hippo's GPU benchmarks from an unpacked bundle (deploy/gpu/bundle.sh): the engine against
# mlx-lm, speculative decoding per drafter against standalone, and pipeline+spec against the plain
# pipeline, and what a verify forward costs (verifycost.py), each with its own timeout and log
# (OUT, default ./out). Steps, in order: smoke dflash gate engine model lookup pipespec1 pipespec3
# dflash16 verify (default: all), e.g. ./run.sh smoke dflash.
set -u
cd "$(dirname "$0")"
root=$PWD
out=${OUT:-$root/out}
mkdir -p "$out" .venv/bin
steps=" ${*:-smoke dflash gate engine model lookup pipespec1 pipespec3 dflash16 verify} "
if [ ! -e site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target site wheels/*.whl || exit 1
  cp -r mlx/lib mlx/include site/mlx/ && cp -r mlx_cuda_13.libs site/
  # libmlx.so finds the CUDA libraries at ../../nvidia/*/lib: those of the Python that has them.
  ln -sfn "$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')" site/nvidia || exit 1
  touch site/.done
fi
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > .venv/bin/python && chmod +x .venv/bin/python
export PYTHONPATH=$root/site LD_LIBRARY_PATH=$root/site/mlx/lib:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1 HIPPO_HOME=$root
M=models/smollm2-135m DF=engines/spec/testdata/dflash-smollm2 AR=engines/spec/testdata/ardraft-smollm2
H=$DF/heldout.json
run() { # name timeout command...
  local name=$1 t=$2
  shift 2
  case "$steps" in *" $name "*) ;; *) return ;; esac
  echo "== $(date +%T) $name: $*"
  timeout "$t" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  cat "$out/$name.txt"
  echo "== $(date +%T) $name rc=$rc"
}
run smoke 300 bash -c "nvidia-smi --query-gpu=name,driver_version --format=csv; bin/hippo run --model $M --chat --prompt 'What is the capital of France?' --max-tokens 24"
run dflash 200 bin/hippo bench spec --model $M --dflash $DF --drafter dflash --block 2 --block 4 --block 8 --prompts $H --num-prompts 4 --chat --max-tokens 64 --rounds 2 --dtype f32
run gate 300 bin/hippo bench spec --model $M --dflash $DF --drafter dflash --block 8 --draft-confidence 0 --draft-confidence 0.2 --draft-confidence 0.35 --prompts $H --num-prompts 4 --chat --max-tokens 64 --rounds 2 --dtype f32
run engine 300 bin/hippo bench engine --model $M --dtype bf16 --dtype f32 --rounds 6 --max-tokens 128
run model 200 bin/hippo bench spec --model $M --draft $AR --drafter model --max-k 4 --prompts $H --num-prompts 4 --chat --max-tokens 64 --rounds 2 --dtype f32
run lookup 150 bin/hippo bench spec --model $M --drafter lookup --max-k 4 --prompts $H --num-prompts 4 --chat --max-tokens 64 --rounds 2 --dtype f32
for k in 1 3; do
  run pipespec$k 200 bin/hippo bench pipeline --mode pipeline+spec --model $M --drafter dflash --draft $DF --draft-tokens $k --link thunderbolt --link wifi --prompts $H --num-prompts 3 --chat --max-tokens 48 --rounds 2 --dtype f32
done
run dflash16 200 bin/hippo bench spec --model $M --dflash $DF --drafter dflash --block 2 --block 4 --block 8 --prompts $H --num-prompts 4 --chat --max-tokens 64 --rounds 2 --dtype bf16 --allow-divergence
run verify 300 python3 verifycost.py $M
