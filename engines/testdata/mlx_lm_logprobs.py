"""mlx-lm as the reference of Hippo's engine tests: exact-parity digests and real-weights fidelity.

Reads JSON on stdin in one of two forms and writes the matching reply:

- A list of requests (shapes_parity_test.go, gemma3_parity_test.go), each {"model": DIR, "dtype":
  "f32"|"bf16"|"f16", "prompt_ids": [...], "max_tokens": N}: mlx-lm's greedy decode, replying per
  request {"tokens": [...], "sha256": [...], "top": [[[id, logprob], ...], ...]}: per generated
  token, the SHA-256 of the step's log-probabilities as little-endian float32 and the five most
  likely ids.
- {"jobs": [JOB, ...]} (smollm2_test.go), each JOB {"model": DIR, "dtype": ..., "generate":
  [{"prompt_ids": [...], "max_tokens": N}], "logprobs": [ids]}: replying {"jobs": [{"tokens":
  [[...]], "logprobs": [...]}, ...]}, greedy ids for each generate request (EOS is not special)
  and the log-probability of each token of `logprobs` after the ones before it, from one forward
  over the whole sequence.

The model is loaded with mlx_lm.load unchanged and cast with set_dtype, exactly as
bench/peers/mlx_lm_peer.py and Hippo's --dtype do.

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


def load_as(req):
    model, _ = load(req["model"])
    model.set_dtype(DTYPES[req["dtype"]])
    return model


def digests(req):
    model = load_as(req)
    prompt = mx.array(req["prompt_ids"], dtype=mx.uint32)
    out = {"tokens": [], "sha256": [], "top": []}
    for tok, logprobs in generate_step(prompt, model, max_tokens=req["max_tokens"]):
        lp = np.array(logprobs.astype(mx.float32))
        out["tokens"].append(int(tok))
        out["sha256"].append(hashlib.sha256(lp.astype("<f4").tobytes()).hexdigest())
        top = np.argsort(-lp, kind="stable")[:5]
        out["top"].append([[int(i), float(lp[i])] for i in top])
    return out


def fidelity(job):
    model = load_as(job)
    out = {"tokens": [], "logprobs": []}
    for g in job.get("generate", []):
        prompt = mx.array(g["prompt_ids"], dtype=mx.uint32)
        out["tokens"].append([int(t) for t, _ in generate_step(prompt, model, max_tokens=g["max_tokens"])])
    ids = job.get("logprobs")
    if ids:
        logits = model(mx.array(ids, dtype=mx.uint32)[None])[0].astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = mx.take_along_axis(lp[:-1], mx.array(ids[1:])[:, None], axis=-1)[:, 0]
        out["logprobs"] = [float(x) for x in picked.tolist()]
    return out


def main():
    req = json.load(sys.stdin)
    if isinstance(req, dict):
        json.dump({"jobs": [fidelity(j) for j in req["jobs"]]}, sys.stdout)
    else:
        json.dump([digests(r) for r in req], sys.stdout)


if __name__ == "__main__":
    main()
