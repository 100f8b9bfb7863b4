#!/usr/bin/env python3
"""Write a dense (dequantized) copy of an MLX affine-quantized checkpoint directory.

On the CPU backend MLX's quantized matmul runs scalar loops whose cost grows with the number of
tokens, so a verify forward over K+1 tokens costs about K+1 decode steps and speculation cannot
pay; dense float weights go through BLAS, where a short block costs about one step. `just
train-dflash` writes models/smollm2-135m-dense with this for the speculative benchmarks.

Usage: dequantize.py IN_DIR OUT_DIR [--dtype float32|bfloat16]
"""

import argparse
import json
import os
import shutil

import mlx.core as mx


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.src, "config.json")))
    q = cfg.pop("quantization", None)
    cfg.pop("quantization_config", None)
    if q is None:
        raise SystemExit(f"{a.src}: config.json has no quantization section: nothing to dequantize")
    w = mx.load(os.path.join(a.src, "model.safetensors"))
    dt = getattr(mx, a.dtype)
    out = {}
    for k, v in w.items():
        if k.endswith((".scales", ".biases")) and k.rsplit(".", 1)[0] + ".weight" in w:
            continue
        p = k.rsplit(".", 1)[0]
        if k.endswith(".weight") and p + ".scales" in w:
            mq = q.get(p, {}) if isinstance(q.get(p), dict) else {}
            v = mx.dequantize(v, w[p + ".scales"], w[p + ".biases"], group_size=mq.get("group_size", q["group_size"]),
                              bits=mq.get("bits", q["bits"]))
        out[k] = v.astype(dt)
    os.makedirs(a.dst, exist_ok=True)
    mx.save_safetensors(os.path.join(a.dst, "model.safetensors"), out, metadata={"format": "mlx"})
    cfg["torch_dtype"] = a.dtype
    json.dump(cfg, open(os.path.join(a.dst, "config.json"), "w"), indent=2)
    for f in os.listdir(a.src):
        if f not in ("config.json", "model.safetensors") and not f.endswith(".safetensors"):
            shutil.copy(os.path.join(a.src, f), os.path.join(a.dst, f))
    print(f"wrote {len(out)} dense tensors ({a.dtype}) to {a.dst}")


if __name__ == "__main__":
    main()
