"""mlx-lm's greedy decode with a digest of every step's log-probabilities, for exact-parity tests.

Reads a JSON list of requests on stdin, each {"model": DIR, "dtype": "f32"|"bf16"|"f16",
"prompt_ids": [...], "max_tokens": N}, and writes a JSON list of replies, each
{"tokens": [...], "sha256": [...], "top": [[[id, logprob], ...], ...]}: per generated token, the
SHA-256 of the step's log-probabilities as little-endian float32 and the five most likely ids. The
model is loaded and cast exactly as bench/peers/mlx_lm_peer.py does.

On Linux, Hippo links OpenBLAS ahead of the reference BLAS that the mlx-cpu wheel bundles (see
engines/mlx/mlx.go), and float32 matmuls round differently in the two libraries. For a bit-level
comparison this interpreter re-executes itself with the same OpenBLAS preloaded.
"""

import hashlib
import json
import os
import sys


def same_blas_as_hippo():
    if sys.platform != "linux" or os.environ.get("HIPPO_SAME_BLAS"):
        return
    for lib in ("/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0"):
        if os.path.exists(lib):
            env = dict(os.environ, LD_PRELOAD=lib, HIPPO_SAME_BLAS="1")
            os.execve(sys.executable, [sys.executable] + sys.argv, env)


same_blas_as_hippo()

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm import load  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402

DTYPES = {"f32": mx.float32, "bf16": mx.bfloat16, "f16": mx.float16}


def run(req):
    model, _ = load(req["model"])
    model.set_dtype(DTYPES[req["dtype"]])
    prompt = mx.array(req["prompt_ids"], dtype=mx.uint32)
    out = {"tokens": [], "sha256": [], "top": []}
    for tok, logprobs in generate_step(prompt, model, max_tokens=req["max_tokens"]):
        lp = np.array(logprobs.astype(mx.float32))
        out["tokens"].append(int(tok))
        out["sha256"].append(hashlib.sha256(lp.astype("<f4").tobytes()).hexdigest())
        top = np.argsort(-lp, kind="stable")[:5]
        out["top"].append([[int(i), float(lp[i])] for i in top])
    return out


def main():
    json.dump([run(r) for r in json.load(sys.stdin)], sys.stdout)


if __name__ == "__main__":
    main()
