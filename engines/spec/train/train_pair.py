#!/usr/bin/env python3
"""Train a small qwen3 TARGET and a smaller DRAFT model from scratch on the Go toolchain's source.

The pair exists so that speculative decoding has real (not random-weight) acceptance rates.

Stages (deterministic for a fixed --seed, Go version and library versions):
  1. corpus: every hand-written *.go file under $(go env GOROOT)/src, in sorted path order;
     files with a "// Code generated ... DO NOT EDIT." header, testdata/ directories and
     files over 200 KB are skipped, and the license header is removed. Held-out split:
     crc32(relative path) % 50 == 0 (~2%).
  2. tokenizer: byte-level BPE (Qwen3-style pre-tokenizer: Split regex + ByteLevel) trained
     with `tokenizers` on every --stride-th training file; <|endoftext|> ends each file.
  3. training: target (4 layers) and draft (1 layer) are trained together, on random
     non-overlapping windows of --seq+1 tokens drawn without replacement from the stride subset:
     AdamW, linear warmup + cosine decay, gradient clipping at 1. The draft is an early exit of
     the target (LayerSkip-style): the target's embedding and first layer, then a final norm of
     its own, trained on 0.5 * cross entropy + 0.5 * KL(target || draft) (--kd), so that it
     learns to agree with the target rather than only with the data. Saved, it is an ordinary
     1-layer qwen3 checkpoint.
  4. held-out loss of each, written into config.json's "hippo" section.
  5. measurement (skip with --no-measure): greedy speculative decoding simulated with mlx-lm
     caches for K = 1..8 (acceptance = accepted / drafted), and the decode-step cost ratio
     c = t(draft) / t(target). Written to metrics.json next to the two model directories.

Usage (the justfile's `train-pair` recipe):
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 .venv/bin/python \
      engines/spec/train/train_pair.py --out models/pair
  ... --measure-only --out engines/spec/testdata/pair   # re-measure an existing pair
"""

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zlib
from functools import partial

import numpy as np

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.qwen3 import Model, ModelArgs

EOT = "<|endoftext|>"
# Qwen3's pre-tokenizer split (digits one by one): engines/tokenizer has a fast scanner for it.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# A base code model has no chat format: the template passes the messages' text through, so
# `hippo run --chat` and mlx-lm's chat paths continue the code they are given.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
GENERATED = re.compile(r"^// Code generated .* DO NOT EDIT\.$", re.M)
# The three-line BSD license header that opens nearly every file: removed, so that 5,800 copies of
# it do not dominate what a small model learns (and generates after every closing brace).
LICENSE = re.compile(r"\A// Copyright [^\n]*\n(?://[^\n]*\n)*?\n")
HELDOUT_MOD = 50
MAX_FILE = 200_000

SIZES = {
    "target": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64, intermediate_size=768),
    # The draft shares the target's embedding, hence its width. With --draft-mode exit (the default)
    # its layer is the target's first layer; with --draft-mode layer it is a layer of its own.
    "draft": dict(hidden_size=256, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, intermediate_size=768),
}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


# ---------------------------------------------------------------- corpus and tokenizer


def go_env(name):
    return subprocess.check_output(["go", "env", name], text=True).strip()


def read_corpus():
    """Returns (train, held) lists of (relative path, text) in sorted path order, and a summary."""
    root = os.path.join(go_env("GOROOT"), "src")
    paths = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "testdata")
        paths += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".go")]
    paths.sort()
    train, held = [], []
    h = hashlib.sha256()
    for rel in paths:
        with open(os.path.join(root, rel), "rb") as f:
            b = f.read()
        if len(b) > MAX_FILE:
            continue
        text = b.decode("utf-8", errors="replace")
        if GENERATED.search(text[:4096]):
            continue
        h.update(rel.encode() + b"\0" + b + b"\0")
        text = LICENSE.sub("", text, count=1)
        (held if zlib.crc32(rel.encode()) % HELDOUT_MOD == 0 else train).append((rel, text))
    summary = dict(go_version=go_env("GOVERSION"), files=len(train) + len(held),
                   train_files=len(train), heldout_files=len(held),
                   bytes=sum(len(t) for _, t in train + held), sha256=h.hexdigest())
    return train, held, summary


def train_tokenizer(texts, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                              use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def tokenizer_config(seq):
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT, "eos_token": EOT, "pad_token": EOT, "unk_token": None,
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, "model_max_length": seq * 8,
        "chat_template": CHAT_TEMPLATE,
    }


def encode_stream(tok, texts):
    """Token ids of the texts, each followed by <|endoftext|>, as one int32 array."""
    eot = tok.token_to_id(EOT)
    out = []
    for enc in tok.encode_batch_fast(texts, add_special_tokens=False):
        out.append(np.asarray(enc.ids, dtype=np.int32))
        out.append(np.asarray([eot], dtype=np.int32))
    return np.concatenate(out)


# ---------------------------------------------------------------- models


def model_config(role, vocab, seq):
    s = SIZES[role]
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **s,
        "vocab_size": vocab, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        # Trained on windows of `seq` tokens; longer contexts run but were never seen.
        "max_position_embeddings": seq * 8, "tie_word_embeddings": True, "hidden_act": "silu",
        "attention_bias": False, "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 0,
    }


def build_model(cfg, seed):
    """A qwen3 model with GPT-2-style init: N(0, 0.02), residual outputs scaled by 1/sqrt(2L)."""
    keys = {f.name for f in ModelArgs.__dataclass_fields__.values()}
    model = Model(ModelArgs(**{k: v for k, v in cfg.items() if k in keys}))
    params = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    resid = 0.02 / math.sqrt(2 * cfg["num_hidden_layers"])
    new = []
    for i, (name, p) in enumerate(params):
        if name.endswith("norm.weight"):
            new.append((name, mx.ones_like(p)))
            continue
        std = resid if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        new.append((name, std * mx.random.normal(p.shape, key=keys[i])))
    model.update(tree_unflatten(new))
    mx.eval(model.parameters())
    return model


def n_params(model):
    return sum(v.size for _, v in tree_flatten(model.parameters()))


class Pair(nn.Module):
    """The target and the draft, trained together; the draft reads and writes tokens through the
    target's embedding (tied lm_head). mode "layer": the draft has its own transformer layer(s)
    and final norm. mode "exit": the draft is an early exit of the target, its first
    num_hidden_layers layers followed by the draft's own final norm. The draft's own copies of
    shared weights are frozen during training and replaced by the target's when saved."""

    def __init__(self, target, draft, mode):
        super().__init__()
        self.target, self.draft, self.mode = target, draft, mode
        if mode == "layer":
            draft.model.embed_tokens.freeze()
        else:
            draft.freeze()
            draft.model.norm.unfreeze()

    def __call__(self, x):
        t = self.target.model
        emb = t.embed_tokens
        if self.mode == "layer":
            h = self.draft.model(x, input_embeddings=emb(x))
            return self.target(x), emb.as_linear(h)
        h = emb(x)
        mask = create_attention_mask(h, None)
        n = len(self.draft.model.layers)
        for i, layer in enumerate(t.layers):
            if i == n:
                hd = h
            h = layer(h, mask, None)
        return emb.as_linear(t.norm(h)), emb.as_linear(self.draft.model.norm(hd))

    def export_draft(self):
        d = self.draft.model
        d.embed_tokens.weight = self.target.model.embed_tokens.weight
        if self.mode == "exit":
            for i in range(len(d.layers)):
                d.layers[i].update(self.target.model.layers[i].parameters())
        d.unfreeze()
        return self.draft


def pair_loss(pair, x, y, kd):
    """Target: next-token cross entropy. Draft: (1 - kd) * cross entropy + kd * KL(target || draft)
    with the target's distribution held fixed, so that the draft learns to agree with it."""
    lt, ld = pair(x)
    yy = y[..., None]
    lse_t = mx.logsumexp(lt, axis=-1, keepdims=True)
    ce_t = (lse_t - mx.take_along_axis(lt, yy, axis=-1)).mean()
    logp_d = ld - mx.logsumexp(ld, axis=-1, keepdims=True)
    ce_d = -mx.take_along_axis(logp_d, yy, axis=-1).mean()
    if kd == 0:
        return ce_t + ce_d, (ce_t, ce_d, mx.array(0.0))
    logp_t = mx.stop_gradient(lt - lse_t)
    kl = (mx.exp(logp_t) * (logp_t - logp_d)).sum(-1).mean()
    return ce_t + (1 - kd) * ce_d + kd * kl, (ce_t, ce_d, kl)


def train(cfgs, stream, args):
    """Trains target and draft together on random non-overlapping windows of the stream.
    Returns ({"target", "draft"} models, tokens seen, loss curve, seconds)."""
    mx.random.seed(args.seed)
    pair = Pair(build_model(cfgs["target"], args.seed), build_model(cfgs["draft"], args.seed + 1),
                args.draft_mode)
    T, B = args.seq, args.batch
    steps = max(1, args.tokens // (B * T))
    n_windows = (len(stream) - 1) // (T + 1)
    if steps * B > n_windows:
        sys.exit(f"{steps * B} windows wanted, the corpus subset has {n_windows}: "
                 f"lower --stride or --tokens")
    order = np.random.default_rng(args.seed).permutation(n_windows)[: steps * B]
    warm = max(1, steps // 20)
    sched = optim.join_schedules(
        [optim.linear_schedule(args.lr / warm, args.lr, warm),
         optim.cosine_decay(args.lr, steps - warm, args.lr * 0.1)], [warm])
    opt = optim.AdamW(learning_rate=sched, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1)
    grad = nn.value_and_grad(pair, pair_loss)
    state = [pair.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        (_, parts), g = grad(pair, x, y, args.kd)
        g, _ = optim.clip_grad_norm(g, 1.0)
        opt.update(pair, g)
        return mx.stack(parts)

    log(f"target {n_params(pair.target) / 1e6:.2f}M params, draft "
        f"{n_params(pair.draft) / 1e6:.2f}M params (draft mode {args.draft_mode}); "
        f"{steps} steps x {B} x {T} tokens, lr {args.lr}, kd {args.kd}")
    t0, t_last, acc, history = time.time(), time.time(), 0.0, []
    for s in range(steps):
        idx = order[s * B:(s + 1) * B, None] * (T + 1) + np.arange(T + 1)[None]
        batch = mx.array(stream[idx])
        parts = step(batch[:, :-1], batch[:, 1:])
        mx.eval(parts, state)
        acc += np.array(parts)
        if (s + 1) % args.log_every == 0 or s + 1 == steps:
            n = (s % args.log_every) + 1
            now = time.time()
            ce_t, ce_d, kl = acc / n
            log(f"step {s + 1}/{steps} target {ce_t:.3f} draft {ce_d:.3f} kl {kl:.3f} "
                f"{n * B * T / (now - t_last):.0f} tok/s {now - t0:.0f}s")
            history.append([s + 1, round(float(ce_t), 4), round(float(ce_d), 4)])
            acc, t_last = 0.0, now
    return {"target": pair.target, "draft": pair.export_draft()}, steps * B * T, history, time.time() - t0


def heldout_loss(model, stream, args):
    """Mean next-token cross entropy (nats) over evenly spaced held-out windows."""
    T, n = args.seq, args.eval_windows
    starts = np.linspace(0, len(stream) - T - 2, n).astype(np.int64)
    total, count = 0.0, 0
    for i in range(0, n, 8):
        idx = starts[i:i + 8, None] + np.arange(T + 1)[None]
        b = mx.array(stream[idx])
        l = nn.losses.cross_entropy(model(b[:, :-1]), b[:, 1:], reduction="sum")
        total += l.item()
        count += b[:, 1:].size
    return total / count, count


def top1_agreement(target, draft, stream, args):
    """How often the draft's argmax equals the target's on held-out text (teacher forcing)."""
    T, n = args.seq, args.eval_windows
    starts = np.linspace(0, len(stream) - T - 2, n).astype(np.int64)
    same = count = 0
    for i in range(0, n, 8):
        b = mx.array(stream[starts[i:i + 8, None] + np.arange(T)[None]])
        same += (mx.argmax(target(b), -1) == mx.argmax(draft(b), -1)).sum().item()
        count += b.size
    return same / count


def save(model, cfg, tok_dir, out):
    os.makedirs(out, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(os.path.join(out, "model.safetensors"), weights, metadata={"format": "mlx"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tok_dir, name), os.path.join(out, name))


def load_pair(out):
    from mlx_lm import load
    target, tok = load(os.path.join(out, "target"))
    draft, _ = load(os.path.join(out, "draft"))
    return target, draft, tok


# ---------------------------------------------------------------- measurement


def greedy(model, cache, ids):
    logits = model(mx.array(ids)[None], cache=cache)
    return mx.argmax(logits[0], axis=-1)


def target_greedy(target, prompt, n):
    cache = make_prompt_cache(target)
    y = greedy(target, cache, prompt)[-1].item()
    out = [y]
    while len(out) < n:
        out.append(greedy(target, cache, [out[-1]])[-1].item())
    return out


def speculate(target, draft, prompt, n, K):
    """Greedy speculative decoding: the draft proposes K tokens one by one, the target checks
    them in one forward of K+1 tokens. Returns (generated tokens, drafted, accepted, rounds)."""
    tc, dc = make_prompt_cache(target), make_prompt_cache(draft)
    out = [greedy(target, tc, prompt)[-1].item()]
    greedy(draft, dc, prompt[:-1] or prompt[:1])  # the draft's cache: the prompt but its last token
    pending = [prompt[-1], out[-1]] if len(prompt) > 1 else [out[-1]]
    drafted = accepted = rounds = 0
    while len(out) < n:
        k = min(K, n - len(out))
        props, feed = [], pending
        for _ in range(k):
            props.append(greedy(draft, dc, feed)[-1].item())
            feed = [props[-1]]
        checks = greedy(target, tc, [out[-1]] + props).tolist()  # checks[i] follows props[:i]
        a = 0
        while a < k and props[a] == checks[a]:
            a += 1
        drafted, accepted, rounds = drafted + k, accepted + a, rounds + 1
        out += props[:a] + [checks[a]]
        trim_prompt_cache(tc, k - a)  # keep out[-1-a-1] .. : the old last token and a accepted
        # The draft cached len(pending)-1 + k tokens of which the committed prefix is kept.
        if a < k:
            trim_prompt_cache(dc, k - 1 - a)
            pending = [checks[a]]
        else:
            pending = [props[-1], checks[a]]
    return out[:n], drafted, accepted, rounds


def step_times(models, ctx, reps, rounds=5):
    """Seconds of one decode step (1 token) of each model at a context of ctx tokens: the models
    take turns for `rounds` rounds of `reps` steps, and each keeps its lowest round median, so
    that load from other processes on a shared machine disturbs the ratio as little as possible."""
    caches, best = [], [math.inf] * len(models)
    for m in models:
        caches.append(make_prompt_cache(m))
        mx.eval(m(mx.array(ctx)[None], cache=caches[-1]))
    x = mx.array([[ctx[-1]]])
    for r in range(rounds + 1):
        for i, (m, c) in enumerate(zip(models, caches)):
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                mx.eval(mx.argmax(m(x, cache=c)[:, -1], axis=-1))
                ts.append(time.perf_counter() - t)
                trim_prompt_cache(c, 1)
            if r > 0:  # round 0 warms up
                best[i] = min(best[i], float(np.median(ts)))
    return best


def heldout_prompts(held_stream, tok, args):
    """Held-out windows of --prompt-tokens at evenly spaced offsets, each starting after a
    newline and cut at the first <|endoftext|>."""
    eot, P = tok.token_to_id(EOT), args.prompt_tokens
    nl = {i for i in range(tok.get_vocab_size()) if tok.decode([i]).endswith("\n")}
    prompts = []
    for p in np.linspace(0, len(held_stream) - 4 * P, args.prompts).astype(int):
        while held_stream[p] not in nl:
            p += 1
        w = held_stream[p + 1:p + 1 + P].tolist()
        prompts.append(w[:w.index(eot)] if eot in w else w)
    return prompts


def measure(out, held_stream, tok, args):
    target, draft, mtok = load_pair(out)
    P, N = args.prompt_tokens, args.gen_tokens
    prompts = heldout_prompts(held_stream, tok, args)
    ref = [target_greedy(target, p, N) for p in prompts]
    res = {}
    for K in range(1, args.max_k + 1):
        d = a = r = mism = 0
        for p, want in zip(prompts, ref):
            got, dd, aa, rr = speculate(target, draft, p, N, K)
            d, a, r = d + dd, a + aa, r + rr
            mism += got != want
        g = a + r  # each verify forward commits its accepted tokens plus the target's own
        res[K] = dict(acceptance=round(a / d, 4), tokens_per_target_forward=round(g / r, 3),
                      drafted=d, accepted=a, mismatched_prompts=mism)
        log(f"K={K}: acceptance {a / d:.3f}, {g / r:.2f} tokens per target forward, "
            f"{mism} prompts differ from plain greedy")
    ctx = prompts[0] + ref[0]
    tt, td = step_times([target, draft], ctx, args.timing_reps)
    c = td / tt
    log(f"decode step at ctx {len(ctx)}: target {tt * 1e3:.3f} ms, draft {td * 1e3:.3f} ms, c = {c:.3f}")
    # Single-forward expectation of speculative speedup: tokens per round / (K c + 1).
    for K, v in res.items():
        v["expected_speedup"] = round(v["tokens_per_target_forward"] / (K * c + 1), 3)
    from mlx_lm import generate
    sample_prompt = "func (b *Buffer) Len() int {\n"
    sample = generate(target, mtok, sample_prompt, max_tokens=96, verbose=False)
    log("target sample:\n" + sample_prompt + sample)
    return dict(prompts=len(prompts), prompt_tokens=P, gen_tokens=N, by_k=res,
                decode_step_ms=dict(target=round(tt * 1e3, 4), draft=round(td * 1e3, 4), ctx=len(ctx)),
                cost_ratio=round(c, 4), sample=sample_prompt + sample,
                prompt_texts=[tok.decode(p) for p in prompts])


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="models/pair")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--stride", type=int, default=4, help="tokenize/train on every Nth train file")
    ap.add_argument("--tokens", type=int, default=786_432, help="training tokens (both models)")
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--kd", type=float, default=0.5, help="weight of the draft's distillation loss")
    ap.add_argument("--draft-mode", choices=("layer", "exit"), default="exit",
                    help="draft: own layer(s) on the shared embedding, or an early exit of the target")
    ap.add_argument("--eval-windows", type=int, default=128)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--max-k", type=int, default=8)
    ap.add_argument("--timing-reps", type=int, default=100)
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--measure-only", action="store_true", help="measure the pair already at --out")
    args = ap.parse_args()
    t_start = time.time()
    mx.random.seed(args.seed)

    train_files, held_files, corpus = read_corpus()
    subset = [t for i, (_, t) in enumerate(train_files) if i % args.stride == 0]
    log(f"corpus: {corpus['go_version']}, {corpus['train_files']} train + "
        f"{corpus['heldout_files']} held-out files, {corpus['bytes'] / 1e6:.1f} MB; "
        f"subset {len(subset)} files {sum(map(len, subset)) / 1e6:.1f} MB")
    from tokenizers import Tokenizer
    tok_dir = os.path.join(args.out, "tokenizer")
    if args.measure_only:
        tok = Tokenizer.from_file(os.path.join(args.out, "target", "tokenizer.json"))
    else:
        tok = train_tokenizer(subset, args.vocab)
        os.makedirs(tok_dir, exist_ok=True)
        tok.save(os.path.join(tok_dir, "tokenizer.json"))
        with open(os.path.join(tok_dir, "tokenizer_config.json"), "w") as f:
            json.dump(tokenizer_config(args.seq), f, indent=2)
            f.write("\n")
        log(f"tokenizer: {tok.get_vocab_size()} tokens")
    held = encode_stream(tok, [t for _, t in held_files])
    held_bytes = sum(len(t.encode()) for _, t in held_files)
    log(f"held-out: {len(held)} tokens, {held_bytes / len(held):.2f} bytes/token")

    metrics = {}
    mpath = os.path.join(args.out, "metrics.json")
    if args.measure_only and os.path.exists(mpath):
        with open(mpath) as f:
            metrics = json.load(f)
    if not args.measure_only:
        stream = encode_stream(tok, subset)
        log(f"train stream: {len(stream)} tokens")
        corpus_desc = (f"{corpus['go_version']} GOROOT/src *.go, hand-written (no generated "
                       f"files, testdata or files > 200 KB), license header removed, sorted by path; held out: "
                       f"crc32(path) % {HELDOUT_MOD} == 0; trained on every {args.stride}th "
                       f"remaining file, {len(stream)} tokens")
        cfgs = {r: model_config(r, tok.get_vocab_size(), args.seq) for r in ("target", "draft")}
        models, seen, hist, secs = train(cfgs, stream, args)
        agree = top1_agreement(models["target"], models["draft"], held, args)
        log(f"trained in {secs:.0f}s; held-out top-1 agreement of draft and target {agree:.3f}")
        metrics.update(tokens_seen=seen, train_seconds=round(secs, 1), loss_curve=hist,
                       top1_agreement=round(agree, 4), kd=args.kd, draft_mode=args.draft_mode,
                       lr=args.lr)
        for role in ("target", "draft"):
            model, cfg = models[role], cfgs[role]
            loss, count = heldout_loss(model, held, args)
            bpb = loss * len(held) / held_bytes / math.log(2)
            log(f"{role}: held-out loss {loss:.4f} nats/token, ppl {math.exp(loss):.2f}, "
                f"{bpb:.3f} bits/byte over {count} tokens")
            cfg["hippo"] = {"role": role, "trained": True, "corpus": corpus_desc,
                            "corpus_sha256": corpus["sha256"], "tokens_seen": seen,
                            "seed": args.seed, "eval_loss": round(loss, 4),
                            "eval_tokens": count, "recipe": "engines/spec/train/train_pair.py"}
            if role == "target":
                cfg["hippo"]["draft"] = "../draft"
            else:
                cfg["hippo"]["target"] = "../target"
                cfg["hippo"]["draft_mode"] = args.draft_mode  # exit: the target's first layers
            save(model, cfg, tok_dir, os.path.join(args.out, role))
            metrics[role] = dict(params=n_params(model), eval_loss=round(loss, 4),
                                 perplexity=round(math.exp(loss), 3), bits_per_byte=round(bpb, 4),
                                 size=SIZES[role])
        del models
        metrics.update(corpus=corpus, seed=args.seed, seq=args.seq, batch=args.batch,
                       vocab=tok.get_vocab_size(), mlx=mx.__version__, python=platform.python_version())
    if not args.no_measure:
        metrics["speculative"] = measure(args.out, held, tok, args)
    if not args.measure_only:
        metrics["wall_seconds"] = round(time.time() - t_start, 1)
    with open(mpath, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    log(f"done in {time.time() - t_start:.0f}s: {args.out}/target, {args.out}/draft, {mpath}")


if __name__ == "__main__":
    main()
