"""What a verify forward costs against a one-token decode step, and whether it picks the same tokens.

Loads a checkpoint with mlx-lm on MLX's default device and, per compute dtype, times a forward of M
tokens (M = 1..16) on a context of up to 96 tokens, trimming the cache back after each, as a speculative
verify of M - 1 drafts would run; then compares the logits of one 9-token forward with those of
nine one-token steps over the same tokens (the largest difference, whether each position's argmax
agrees, and the top-2 gap of the one-token logits). Usage: verifycost.py MODEL_DIR [--reps N]
"""

import argparse
import time

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

ROWS = [1, 2, 3, 4, 5, 8, 9, 16]


def trim(cache, n):
    for c in cache:
        c.trim(n)


def step_ms(model, cache, ids, reps):
    for _ in range(3):
        mx.eval(model(ids, cache=cache))
        trim(cache, ids.shape[1])
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(model(ids, cache=cache))
        trim(cache, ids.shape[1])
    return (time.perf_counter() - t) / reps * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--dtype", action="append", choices=["f32", "bf16"], help="default: f32 and bf16")
    args = ap.parse_args()
    model, tok = load(args.model)
    prompt = tok.encode("Write a short paragraph about the ocean and the lighthouse keepers who watch it. " * 6)[:96]
    print(f"{args.model} on {mx.default_device()}, MLX {mx.__version__}, context of {len(prompt)} tokens, {args.reps} timed forwards each")
    for name in args.dtype or ["f32", "bf16"]:
        model.set_dtype({"f32": mx.float32, "bf16": mx.bfloat16}[name])
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array([prompt]), cache=cache))
        times = [(m, step_ms(model, cache, mx.array([prompt[:m]]), args.reps)) for m in ROWS]
        one = times[0][1]
        print(f"{name} forward ms by tokens M: " + " ".join(f"M={m}:{ms:.2f}({ms / one:.2f}x)" for m, ms in times))
        seq = prompt[10:19]
        block = model(mx.array([seq]), cache=cache)[0].astype(mx.float32)
        mx.eval(block)
        trim(cache, len(seq))
        single = mx.stack([model(mx.array([[t]]), cache=cache)[0, -1] for t in seq]).astype(mx.float32)
        mx.eval(single)
        trim(cache, len(seq))
        diff = mx.abs(block - single).max().item()
        agree = (mx.argmax(block, -1) == mx.argmax(single, -1)).tolist()
        top2 = mx.sort(single, -1)[:, -2:]
        gaps = [round(g, 3) for g in (top2[:, 1] - top2[:, 0]).tolist()]
        print(f"{name} {len(seq)}-token forward vs one-token steps: largest |logit difference| {diff:.4g}; argmax agrees {agree}; top-2 gaps {gaps}")


if __name__ == "__main__":
    main()
