#!/usr/bin/env python3
"""Distil a small autoregressive draft for SmolLM2-135M-Instruct (the model drafter), MLX on CPU.

The draft is an ordinary llama checkpoint (config.json + model.safetensors + tokenizer files)
with 2 layers and a restricted vocabulary: its embedding (tied to its head) holds only the N
target tokens the training replies use most (FR-Spec's idea), and draft_vocab.json maps each
draft row to its target id. Hippo's loader (engines/model/vocabmap.go) reads that map: target ids
outside the set enter the draft as one fallback row, and the draft's logits are scattered back
onto the target's vocabulary with -inf elsewhere, so to the engine it is a model over the target's
vocabulary that never proposes a token outside the set (for sampling its proposal distribution is
exactly zero there, which keeps the rejection rule exact). Why: with the full 49,152-row head a
1-2 layer draft spends most of its step in the head (a quarter of a target step on a
memory-bound CPU) and its bf16 embedding alone is 57 MB.

Stages (fixed --seed):
  1. target and data: train_dflash.py's loader and prompts. The replies are the target's greedy
     chat replies cached in --data (train_dflash.py's format; read only here: chunks that are not
     there yet are skipped, so training can start while the cache grows). The held-out replies are
     generated into --heldout-data when missing (the same generator, 16 prompts).
  2. vocabulary: the N most frequent reply tokens of the training replies, then the target ids in
     BPE merge order (lower id first) until N-1 rows; the last row is the fallback (no target id).
  3. teacher: the target's distribution over the draft vocabulary at every reply position,
     computed from the cached output of layer 27 (its last two layers, norm and head, restricted
     to the N rows), kept as its top --topk ids and probabilities.
  4. draft: target layers --init-layers (default 0 and 1, an early exit) + the target's final norm
     and the target's embedding rows for the draft vocabulary (the fallback row: the mean of the
     rows left out). Training: teacher-forced over prompt + reply, loss on the reply positions:
     cross entropy against the teacher's top-k (renormalised) + --hard x cross entropy against
     the target's greedy token. AdamW, warmup + cosine over a wall-clock budget (--minutes).
  5. evaluation on the held-out replies: top-1 agreement (teacher forcing) and greedy speculative
     acceptance by K = 1..8, replayed exactly from the per-position agreement (a greedy draft
     conditioned on an accepted prefix sees the target's own tokens), in metrics.json and
     config.json's "hippo" section.

Usage (the justfile's `train-ardraft` recipe):
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 .venv/bin/python \
      engines/spec/train/train_ardraft.py --out models/ardraft-smollm2
"""

import argparse
import json
import os
import random
import shutil
import sys
import time

import numpy as np

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model as Llama, ModelArgs as LlamaArgs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_dflash as td  # noqa: E402  (the target loader, prompts and data cache)

log = td.log
TEACHER_TAP = 27  # the cached tap the teacher's last layers start from


def load_cached(model, tok, prompts, max_tokens, taps, batch, cache_dir, key, generate):
    """The cached replies (and the teacher tap's features) of the chunks present in cache_dir; with
    generate, missing chunks are generated there first (td.build_data). Returns seqs, feats (only
    the TEACHER_TAP slice), prompt lengths, for the prompts whose chunk was there."""
    if generate:
        seqs, feats, plen = td.build_data(model, tok, prompts, max_tokens, taps, batch, cache_dir, key)
        j = taps.index(TEACHER_TAP)
        H = model.args.hidden_size
        return seqs, [f[:, j * H:(j + 1) * H] for f in feats], plen
    seqs, feats, plen = [], [], []
    j, H = taps.index(TEACHER_TAP), model.args.hidden_size
    for c in range(0, len(prompts), batch):
        idx = list(range(c, min(c + batch, len(prompts))))
        path = os.path.join(cache_dir, f"chunk-{c // batch:04d}.npz")
        if not os.path.exists(path):
            break
        try:
            z = np.load(path, allow_pickle=True)
            ok = str(z["key"]) == json.dumps([key, [prompts[i] for i in idx]])
        except Exception as e:  # a chunk still being written
            log(f"  {path}: {e}: skipped")
            break
        if not ok:
            sys.exit(f"{path}: made for other prompts or settings; check --train-prompts/--seed/--gguf")
        for k, i in enumerate(idx):
            s = [int(v) for v in z["seqs"][k]]
            seqs.append(s)
            feats.append(np.ascontiguousarray(z["feats"][k][:, j * H:(j + 1) * H]))
            plen.append(len(td.chat_ids(tok, prompts[i])))
    return seqs, feats, plen


def expected_counts(target, feats, seqs, plen, every=8, batch=16):
    """The target's expected count of every token over the training replies: its next-token
    probabilities summed over every `every`-th reply position (times `every`), from the cached
    layer-27 output. It ranks the tokens the replies never emitted but the target finds likely."""
    layers = target.model.layers[TEACHER_TAP + 1:]
    mass = mx.zeros((target.args.vocab_size,))
    for s in range(0, len(seqs), batch):
        idx = list(range(s, min(s + batch, len(seqs))))
        h = td.teacher_hidden(layers, feats, seqs, idx)
        sel = [(r, t) for r, i in enumerate(idx) for t in range(plen[i] - 1, len(seqs[i]) - 1, every)]
        hs = h[mx.array([r for r, _ in sel]), mx.array([t for _, t in sel])]
        p = mx.softmax(target.model.embed_tokens.as_linear(target.model.norm(hs)), -1)
        mass = mass + p.sum(0) * every
        mx.eval(mass)
    return np.array(mass)


def draft_vocab(train_seqs, train_plen, n, mass):
    """The draft's rows: the n-1 tokens with the highest count in the training replies plus the
    target's expected count there (mass), in target id order; the fallback row follows them."""
    cnt = np.zeros(len(mass), np.float64)
    for s, p in zip(train_seqs, train_plen):
        np.add.at(cnt, np.array(s[p:]), 1)
    score = cnt + mass
    order = np.lexsort((np.arange(len(mass)), -score))
    return sorted(int(t) for t in order[:n - 1]), cnt


def make_draft(target, rows, init_layers, fallback_init):
    a = target.args
    args = LlamaArgs(
        model_type="llama", hidden_size=a.hidden_size, num_hidden_layers=len(init_layers),
        intermediate_size=a.intermediate_size, num_attention_heads=a.num_attention_heads,
        num_key_value_heads=a.num_key_value_heads, rms_norm_eps=a.rms_norm_eps,
        vocab_size=len(rows) + 1, rope_theta=a.rope_theta, head_dim=a.head_dim,
        tie_word_embeddings=True, max_position_embeddings=a.max_position_embeddings)
    d = Llama(args)
    E = target.model.embed_tokens.weight
    w = [("model.embed_tokens.weight", mx.concatenate([E[mx.array(rows)], fallback_init[None]], 0)),
         ("model.norm.weight", target.model.norm.weight)]
    for j, li in enumerate(init_layers):
        for k, v in tree_flatten(target.model.layers[li].parameters()):
            w.append((f"model.layers.{j}.{k}", v))
    d.load_weights(w)
    mx.eval(d.parameters())
    return d


def batches(data, idx, Tmax, fallback):
    """Right-padded draft inputs [n, Tmax], teacher top-k ids/probs [n, Tmax, k], hard labels and
    the loss mask (reply positions)."""
    seqs, plen, tmap, teach = data
    k = teach[idx[0]][0].shape[1]
    n = len(idx)
    x = np.full((n, Tmax), fallback, np.int32)
    tid = np.zeros((n, Tmax, k), np.int32)
    tpr = np.zeros((n, Tmax, k), np.float32)
    hard = np.zeros((n, Tmax), np.int32)
    m = np.zeros((n, Tmax), np.float32)
    for r, i in enumerate(idx):
        s = np.array(seqs[i][:Tmax])
        T = len(s)
        x[r, :T] = tmap[s]
        a = plen[i] - 1
        b = min(len(seqs[i]) - 1, Tmax)
        tid[r, a:b], tpr[r, a:b] = teach[i][0][:b - a], teach[i][1][:b - a]
        nxt = tmap[np.array(seqs[i][a + 1:b + 1])]
        hard[r, a:b] = nxt
        m[r, a:b] = nxt != fallback  # a reply token outside the draft vocabulary has no label
    return mx.array(x), mx.array(tid), mx.array(tpr), mx.array(hard), mx.array(m)


def evaluate(draft, data, fallback, max_k=8, batch=16):
    fbmask = mx.where(mx.arange(fallback + 1) == fallback, -1e9, 0.0)
    """Held-out top-1 agreement (teacher forcing, reply positions: the draft's greedy pick equals
    the target's greedy token) and greedy speculative decoding replayed by K."""
    seqs, plen, tmap, _ = data
    agree = []
    for s in range(0, len(seqs), batch):
        idx = list(range(s, min(s + batch, len(seqs))))
        T = max(len(seqs[i]) for i in idx)
        x = np.full((len(idx), T), fallback, np.int32)
        for r, i in enumerate(idx):
            x[r, :len(seqs[i])] = tmap[np.array(seqs[i])]
        logits = draft(mx.array(x)) + fbmask  # the fallback row is input-only: never proposed
        pred = np.array(mx.argmax(logits, -1))
        for r, i in enumerate(idx):
            a, b = plen[i] - 1, len(seqs[i]) - 1
            want = tmap[np.array(seqs[i][a + 1:b + 1])]
            ok = (pred[r, a:b] == want) & (want != fallback)
            agree.append(ok)
    top1 = float(np.concatenate(agree).mean())
    by_k = {}
    for K in range(1, max_k + 1):
        drafted = accepted = steps = 0
        pos = np.zeros(K)
        for ok in agree:
            # ok[j]: the draft predicts reply token j+1 from the target's tokens 0..j. The target
            # emits reply token 0 at prefill; a step at t (t tokens emitted) drafts tokens t..t+K-1.
            t = 1
            n = len(ok) + 1  # reply tokens
            while t < n:
                kk = min(K, n - t)
                m = 0
                while m < kk and ok[t - 1 + m]:
                    m += 1
                pos[:m] += 1
                drafted += kk
                accepted += m
                steps += 1
                t += m + 1
        by_k[K] = {"acceptance": round(accepted / drafted, 4), "accepted_per_step": round(accepted / steps, 3),
                   "by_position": [round(p / steps, 3) for p in pos]}
    return top1, by_k


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=".cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tokenizer-from", default="models/smollm2-135m-dense",
                    help="checkpoint whose tokenizer files the draft gets (the target's)")
    ap.add_argument("--out", default="models/ardraft-smollm2")
    ap.add_argument("--data", default="models/dflash-data/train", help="train_dflash.py's cache of training replies (read only)")
    ap.add_argument("--heldout-data", default="models/ardraft-data/heldout", help="held-out replies (generated when missing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-prompts", type=int, default=384, help="training replies used: the first N of the cache (chunks not there yet are skipped)")
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--gen-batch", type=int, default=128)
    ap.add_argument("--taps", default="1,8,14,20,27", help="the cache's taps (its key)")
    ap.add_argument("--vocab", type=int, default=8192, help="draft rows, the fallback included")
    ap.add_argument("--init-layers", default="0,1", help="target layers the draft's layers start from")
    ap.add_argument("--topk", type=int, default=32)
    ap.add_argument("--hard", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--compare-inits", default="", help="';'-separated layer lists: print their held-out agreement untrained and exit")
    args = ap.parse_args()
    mx.random.seed(args.seed)
    random.seed(args.seed)
    t0 = time.time()
    target, tok, _ = td.load_gguf(args.gguf)
    target.freeze()
    V = target.args.vocab_size
    taps = [int(x) for x in args.taps.split(",")]
    key = json.dumps(["tapped-greedy-v2", args.gguf.rsplit("/", 1)[-1], args.max_tokens, taps])
    train_p, eval_p = td.prompt_sets(args.seed, args.train_prompts, args.eval_prompts)
    tr = load_cached(target, tok, train_p, args.max_tokens, taps, args.gen_batch, args.data, key, False)
    if not tr[0]:
        sys.exit(f"{args.data}: no cached training replies: run `just train-dflash` (or its --data-only stage) first")
    ho = load_cached(target, tok, eval_p, args.max_tokens, taps, args.gen_batch, args.heldout_data, key, True)
    ntr = sum(len(s) - p for s, p in zip(tr[0], tr[2]))
    nho = sum(len(s) - p for s, p in zip(ho[0], ho[2]))
    log(f"data: {len(tr[0])} train replies ({ntr} tokens), {len(ho[0])} held-out ({nho} tokens) [{time.time() - t0:.0f}s]")

    t = time.time()
    mass = expected_counts(target, tr[1], tr[0], tr[2])
    rows, cnt = draft_vocab(tr[0], tr[2], args.vocab, mass)
    fallback = len(rows)
    tmap = np.full(V, fallback, np.int32)
    tmap[rows] = np.arange(len(rows))
    used = int((cnt > 0).sum())
    hcnt = np.zeros(V, np.int64)
    for s, p in zip(ho[0], ho[2]):
        np.add.at(hcnt, np.array(s[p:]), 1)
    cover = float(hcnt[rows].sum() / hcnt.sum())
    log(f"vocabulary: {len(rows)} rows + fallback; the training replies use {used} distinct tokens; "
        f"held-out reply tokens covered: {cover:.4f} [{time.time() - t:.0f}s]")
    for n in (4096, 8192, 12288, 16384):
        r, _ = draft_vocab(tr[0], tr[2], n, mass)
        log(f"  held-out coverage with {n} rows: {hcnt[r].sum() / hcnt.sum():.4f}")
    E = target.model.embed_tokens.weight
    rest = np.ones(V, bool)
    rest[rows] = False
    fb_init = E[mx.array(np.nonzero(rest)[0])].mean(0)

    t = time.time()
    teach_tr = td.teacher_topk(target, TEACHER_TAP, tr[1], tr[0], tr[2], rows, args.topk)
    teach_ho = td.teacher_topk(target, TEACHER_TAP, ho[1], ho[0], ho[2], rows, args.topk)
    # how often the (float16-tap) teacher's top-1 is the target's greedy token
    hit = np.concatenate([tp[0][:, 0] == tmap[np.array(s[p:])] for (tp, s, p) in zip(teach_ho, ho[0], ho[2])])
    log(f"teacher top-{args.topk} computed in {time.time() - t:.0f}s; its top-1 = the greedy reply token on {hit.mean():.4f} of held-out positions")
    train = (tr[0], tr[2], tmap, teach_tr)
    held = (ho[0], ho[2], tmap, teach_ho)

    if args.compare_inits:
        for spec in args.compare_inits.split(";"):
            ls = [int(x) for x in spec.split(",")]
            d = make_draft(target, rows, ls, fb_init)
            top1, by_k = evaluate(d, held, fallback)
            log(f"init layers {ls}: held-out top-1 agreement {top1:.3f}; acceptance K=4 {by_k[4]['acceptance']:.3f}")
        return

    init_layers = [int(x) for x in args.init_layers.split(",")]
    draft = make_draft(target, rows, init_layers, fb_init)
    top1, by_k = evaluate(draft, held, fallback)
    log(f"untrained (target layers {init_layers}): held-out top-1 {top1:.3f}, acceptance K=4 {by_k[4]['acceptance']:.3f}")
    curve = [{"step": 0, "heldout_top1": round(top1, 4), "acceptance_k4": by_k[4]["acceptance"]}]

    Tmax = max(len(s) for s in tr[0])
    hard_w = args.hard

    fbmask = mx.where(mx.arange(fallback + 1) == fallback, -1e9, 0.0)

    def loss_fn(m, x, tid, tpr, hard, mask):
        logits = m(x) + fbmask  # as in hippo, the fallback row is never a candidate
        lse = mx.logsumexp(logits, -1, keepdims=True)
        lp = logits - lse
        soft = -(mx.take_along_axis(lp, tid, -1) * tpr).sum(-1)
        hce = -mx.take_along_axis(lp, hard[..., None], -1)[..., 0]
        loss = ((soft + hard_w * hce) * mask).sum() / mask.sum()
        acc = ((mx.argmax(logits, -1) == hard) * mask).sum() / mask.sum()
        return loss, acc

    lg = nn.value_and_grad(draft, loss_fn)
    # The schedule follows the wall-clock budget (td.clock_lr: linear warmup over the first 3%,
    # then cosine to 5%), so a slower machine takes fewer steps but still anneals.
    opt = optim.AdamW(learning_rate=args.lr, weight_decay=0.01)
    state = [draft.state, opt.state]

    @lambda f: mx.compile(f, inputs=state, outputs=state)
    def step(*b):
        (l, acc), g = lg(draft, *b)
        g, _ = optim.clip_grad_norm(g, 1.0)
        opt.update(draft, g)
        return l, acc

    rng = random.Random(args.seed)
    order = []
    t = time.time()
    budget = args.minutes * 60
    s, ema, best = 0, None, (top1, 0)
    while s < args.max_steps and time.time() - t < budget:
        if len(order) < args.batch:
            order = list(range(len(tr[0])))
            rng.shuffle(order)
        idx, order = order[:args.batch], order[args.batch:]
        opt.learning_rate = mx.array(td.clock_lr(args.lr, (time.time() - t) / budget), mx.float32)
        l, acc = step(*batches(train, idx, Tmax, fallback))
        mx.eval(state, l, acc)
        s += 1
        ema = (float(l), float(acc)) if ema is None else (0.9 * ema[0] + 0.1 * float(l), 0.9 * ema[1] + 0.1 * float(acc))
        if s % 10 == 0:
            log(f"step {s} loss {ema[0]:.3f} train top-1 {ema[1]:.3f} lr {float(opt.learning_rate):.2e} ({(time.time() - t) / s:.2f}s/step)")
        if s % args.eval_every == 0:
            te = time.time()
            top1, by_k = evaluate(draft, held, fallback)
            curve.append({"step": s, "minutes": round((time.time() - t) / 60, 1), "train_loss": round(ema[0], 3),
                          "train_top1": round(ema[1], 3), "heldout_top1": round(top1, 4),
                          "acceptance_k4": by_k[4]["acceptance"]})
            log(f"  held-out top-1 {top1:.3f}; acceptance K=4 {by_k[4]['acceptance']:.3f} ({time.time() - te:.0f}s)")
            t += time.time() - te  # evaluation does not count against the budget
    train_s = time.time() - t
    log(f"trained {s} steps in {train_s:.0f}s")
    top1, by_k = evaluate(draft, held, fallback)
    log(f"held-out top-1 agreement {top1:.4f}")
    for K, r in by_k.items():
        log(f"  K={K}: acceptance {r['acceptance']:.3f}, accepted per step {r['accepted_per_step']:.2f}, by position "
            + " ".join(f"{p:.2f}" for p in r["by_position"]))

    os.makedirs(args.out, exist_ok=True)
    ws = {k: v.astype(mx.bfloat16) for k, v in tree_flatten(draft.parameters())}
    mx.save_safetensors(os.path.join(args.out, "model.safetensors"), ws, metadata={"format": "mlx"})
    a = draft.args
    metrics = {"role": "draft", "trained_by": "engines/spec/train/train_ardraft.py", "target": "SmolLM2-135M-Instruct",
               "seed": args.seed, "train_replies": len(tr[0]), "train_reply_tokens": ntr,
               "heldout_replies": len(ho[0]), "heldout_reply_tokens": nho, "init_layers": init_layers,
               "vocab_rows": len(rows) + 1, "heldout_coverage": round(cover, 4), "steps": s,
               "train_seconds": round(train_s), "lr": args.lr, "batch": args.batch, "topk": args.topk,
               "hard": args.hard, "heldout_top1": round(top1, 4), "by_k": by_k, "curve": curve}
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden_size,
           "num_hidden_layers": a.num_hidden_layers, "intermediate_size": a.intermediate_size,
           "num_attention_heads": a.num_attention_heads, "num_key_value_heads": a.num_key_value_heads,
           "head_dim": a.head_dim, "rms_norm_eps": a.rms_norm_eps, "rope_theta": a.rope_theta,
           "vocab_size": a.vocab_size, "tie_word_embeddings": True, "hidden_act": "silu",
           "max_position_embeddings": a.max_position_embeddings, "attention_bias": False, "mlp_bias": False,
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
           "hippo": {k: v for k, v in metrics.items() if k not in ("curve", "by_k")}}
    json.dump(cfg, open(os.path.join(args.out, "config.json"), "w"), indent=1)
    json.dump({"target_vocab_size": V, "fallback": fallback, "ids": [int(r) for r in rows] + [-1]},
              open(os.path.join(args.out, "draft_vocab.json"), "w"))
    json.dump(metrics, open(os.path.join(args.out, "metrics.json"), "w"), indent=1)
    json.dump(eval_p, open(os.path.join(args.out, "heldout.json"), "w"), indent=1)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        p = os.path.join(args.tokenizer_from, f)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(args.out, f))
    log(f"wrote {args.out} ({os.path.getsize(os.path.join(args.out, 'model.safetensors')) / 1e6:.1f} MB) [{time.time() - t0:.0f}s in all]")


if __name__ == "__main__":
    main()
