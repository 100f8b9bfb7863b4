"""Reference outputs of Hugging Face `tokenizers` and `transformers` for the Go parity tests.

Reads one JSON request from stdin:
  {"jobs": [{"dir": str, "texts": [str], "pretokenize": bool, "decode": [[int]],
   "chats": [{"messages": [...], "add_generation_prompt": bool}]}]}
and writes one JSON response to stdout:
  {"jobs": [{"ids": [[int]], "decoded": [str], "decoded_skip": [str], "pretokens": [[str]],
   "decode": [str], "decode_skip": [str], "chats": [str]}]}

`ids` are encodings with the default add_special_tokens=True; `decoded`/`decoded_skip` decode
those ids with skip_special_tokens False/True; `pretokens` are the words the normalizer and
pre-tokenizer make of each text (ignoring added tokens), when the job asks for them; `decode`/`decode_skip` decode the given id lists.
All texts of a job are encoded in one call so a test run starts Python once.
"""

import json
import os
import sys

from tokenizers import Tokenizer


def run_job(job):
    tok = Tokenizer.from_file(os.path.join(job["dir"], "tokenizer.json"))
    out = {}
    texts = job.get("texts", [])
    encs = tok.encode_batch(texts) if texts else []
    ids = [e.ids for e in encs]
    out["ids"] = ids
    out["decoded"] = tok.decode_batch(ids, skip_special_tokens=False) if ids else []
    out["decoded_skip"] = tok.decode_batch(ids, skip_special_tokens=True) if ids else []
    if job.get("pretokenize"):
        norm = tok.normalizer.normalize_str if tok.normalizer else (lambda t: t)
        pre = tok.pre_tokenizer
        out["pretokens"] = [
            [p for p, _ in pre.pre_tokenize_str(norm(t))] if pre else [norm(t)] for t in texts
        ]
    dec = job.get("decode", [])
    out["decode"] = tok.decode_batch(dec, skip_special_tokens=False) if dec else []
    out["decode_skip"] = tok.decode_batch(dec, skip_special_tokens=True) if dec else []
    chats = job.get("chats", [])
    if chats:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoTokenizer

        at = AutoTokenizer.from_pretrained(job["dir"])
        out["chats"] = [
            at.apply_chat_template(
                c["messages"],
                tokenize=False,
                add_generation_prompt=c["add_generation_prompt"],
            )
            for c in chats
        ]
    return out


def main():
    req = json.load(sys.stdin)
    resp = {"jobs": [run_job(job) for job in req["jobs"]]}
    json.dump(resp, sys.stdout, ensure_ascii=True)


if __name__ == "__main__":
    main()
