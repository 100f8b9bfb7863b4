"""mlx-lm's RotatingKVCache as the reference for engines/model's RotatingKVCache.

Reads a JSON list of scenarios on stdin, each {"max_size": N, "keep": K, "ops": [{"update": S} |
{"trim": N}, ...]}, and writes a list with the replies of each. Updates
append S positions whose keys and values are the position numbers; trims go through
is_trimmable first, as mlx-lm's trim_prompt_cache does. Writes one reply per op:
{"offset": ..., "keys": [position of each returned key, in order], "trimmed": n}.
"""

import json
import sys

import mlx.core as mx
from mlx_lm.models.cache import RotatingKVCache


def run(req):
    c = RotatingKVCache(max_size=req["max_size"], keep=req["keep"])
    pos, out = 0, []
    for op in req["ops"]:
        if "update" in op:
            s = op["update"]
            x = mx.broadcast_to(mx.arange(pos, pos + s, dtype=mx.float32)[None, None, :, None], (1, 1, s, 2))
            k, v = c.update_and_fetch(x, x)
            pos += s
            out.append({"offset": c.offset, "keys": [int(p) for p in k[0, 0, :, 0].tolist()],
                        "values": [int(p) for p in v[0, 0, :, 1].tolist()], "trimmed": 0})
        else:
            n = c.trim(op["trim"]) if c.is_trimmable() else 0
            pos -= n
            out.append({"offset": c.offset, "keys": [], "values": [], "trimmed": n})
    return out


def main():
    json.dump([run(r) for r in json.load(sys.stdin)], sys.stdout)


if __name__ == "__main__":
    main()
