"""Golden token ids of SmolLM2's GGUF tokenizer from llama.cpp itself, for tokenizer_test.go.

Usage: llamacpp_tokens.py FILE.gguf CORPUS.json.gz OUT.json.gz
CORPUS.json.gz is {"lines": [...], "texts": [...]} (the Go tokenizer corpus, written by
`go test ./engines/tokenizer -run TestCorpusSize -args -corpus-out FILE`, gzipped); OUT gets
{"reference": ..., "ids": [...]}, one id list per line, then per text. Each text is tokenized by
llama.cpp (through llama-cpp-python, vocab only) without a BOS and with special-token parsing on,
which is how Hugging Face tokenizers treat added tokens. `just golden-gguf-tokens` runs this in a
separate virtual environment, since llama-cpp-python builds llama.cpp from source.
"""

import gzip
import json
import os
import sys

import llama_cpp


def main():
    gguf, corpus, out = sys.argv[1:4]
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        c = json.load(f)
    texts = c["lines"] + c["texts"]
    llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    ids = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    doc = {
        "reference": "llama-cpp-python " + llama_cpp.__version__ + " (llama.cpp tokenizer, add_bos=False, special=True)",
        "gguf": os.path.basename(gguf),
        "ids": ids,
    }
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(doc, ensure_ascii=False).encode("utf-8"))


if __name__ == "__main__":
    main()
