"""mlx-lm as Hippo's reference and performance peer.

Reads one JSON request per invocation on stdin and writes one JSON object to stdout:

  {"op": "generate", "model": DIR, "dtype": "f32"|"bf16"|"f16", "prompt_ids": [...],
   "max_tokens": N}
      -> {"tokens": [...]}  greedy ids, exactly max_tokens of them (EOS is not special)

  {"op": "batch", "requests": [...]} -> {"results": [...]}  several requests, one interpreter

  {"op": "bench", "model": DIR, "dtype": ..., "prompt_ids": [...], "max_tokens": N,
   "rounds": R, "ignore_eos": BOOL}
      -> {"decode_tok_s": [...], "prompt_tok_s": [...], "tokens": [...]}  one entry per round,
         as mlx-lm's own stream_generate reports them (generation_tps, prompt_tps,
         generation_tokens); with ignore_eos the tokenizer's EOS set is emptied for the call,
         so every round generates max_tokens tokens, as Hippo's IgnoreEOS does

  {"op": "info"} -> {"mlx": VERSION, "mlx_lm": VERSION, "device": "cpu"|"gpu"}

The model is loaded with mlx_lm.load, unchanged, then cast to the compute dtype with
nn.Module.set_dtype (which leaves quantized integer weights alone), exactly what Hippo's
--dtype does at load time.
"""

import json
import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step, stream_generate

DTYPES = {"f32": mx.float32, "bf16": mx.bfloat16, "f16": mx.float16}


_loaded = {}


def load_model(req):
    key = (req["model"], req.get("dtype"))
    if key in _loaded:
        return _loaded[key]
    _loaded.clear()
    model, tokenizer = load(req["model"])
    dtype = req.get("dtype")
    if dtype:
        model.set_dtype(DTYPES[dtype])
    _loaded[key] = (model, tokenizer)
    return model, tokenizer


def generate(req):
    model, _ = load_model(req)
    prompt = mx.array(req["prompt_ids"], dtype=mx.uint32)
    out = []
    for tok, _ in generate_step(prompt, model, max_tokens=req["max_tokens"]):
        out.append(int(tok))
    return {"tokens": out}


def bench(req):
    model, tokenizer = load_model(req)
    decode, prompt, tokens = [], [], []
    ids = req["prompt_ids"]
    eos = tokenizer.eos_token_ids
    if req.get("ignore_eos"):
        tokenizer.eos_token_ids = []
    try:
        for _ in range(req.get("rounds", 1)):
            last = None
            for resp in stream_generate(model, tokenizer, ids, max_tokens=req["max_tokens"]):
                last = resp
            # generate_step enqueues one step beyond max_tokens; let it finish here, outside the
            # timing, so that it does not run into the other side's turn.
            mx.synchronize()
            decode.append(last.generation_tps)
            prompt.append(last.prompt_tps)
            tokens.append(last.generation_tokens)
    finally:
        tokenizer.eos_token_ids = eos
    return {"decode_tok_s": decode, "prompt_tok_s": prompt, "tokens": tokens}


def info(req):
    import mlx_lm

    return {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__, "device": str(mx.default_device())}


def batch(req):
    return {"results": [handle(r) for r in req["requests"]]}


OPS = {"generate": generate, "bench": bench, "batch": batch, "info": info}


def handle(req):
    if req.get("op") not in OPS:
        sys.exit(f"mlx_lm_peer: unknown op {req.get('op')!r}: use one of {sorted(OPS)}")
    return OPS[req["op"]](req)


def main():
    if "--serve" in sys.argv:
        # One JSON request per line, one JSON reply per line, until EOF: the model stays loaded
        # between requests, so benchmarks can alternate with Hippo round by round.
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(handle(json.loads(line))), flush=True)
        return
    json.dump(handle(json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
