"""mlx-lm on a converted GGUF checkpoint, for the real-weights fidelity tests (smollm2_test.go).

Reads {"jobs": [JOB, ...]} on stdin, each JOB
  {"model": DIR, "dtype": "f32"|"bf16", "generate": [{"prompt_ids": [...], "max_tokens": N}],
   "logprobs": [ids]}
and writes {"jobs": [{"tokens": [[...]], "logprobs": [...]}, ...]}: greedy ids for each generate
request (EOS is not special), and the log-probability of each token of `logprobs` after the ones
before it, from one forward over the whole sequence.

The model is loaded with mlx_lm.load unchanged and cast with set_dtype, as Hippo's --dtype does.
Like mlx_lm_logprobs.py, it re-executes itself with the OpenBLAS that Hippo links.
"""

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
from mlx_lm import load  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402

DTYPES = {"f32": mx.float32, "bf16": mx.bfloat16, "f16": mx.float16}


def run(req):
    model, _ = load(req["model"])
    model.set_dtype(DTYPES[req["dtype"]])
    out = {"tokens": [], "logprobs": []}
    for g in req.get("generate", []):
        prompt = mx.array(g["prompt_ids"], dtype=mx.uint32)
        out["tokens"].append([int(t) for t, _ in generate_step(prompt, model, max_tokens=g["max_tokens"])])
    ids = req.get("logprobs")
    if ids:
        logits = model(mx.array(ids, dtype=mx.uint32)[None])[0].astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = mx.take_along_axis(lp[:-1], mx.array(ids[1:])[:, None], axis=-1)[:, 0]
        out["logprobs"] = [float(x) for x in picked.tolist()]
    return out


def main():
    req = json.load(sys.stdin)
    json.dump({"jobs": [run(j) for j in req["jobs"]]}, sys.stdout)


if __name__ == "__main__":
    main()
