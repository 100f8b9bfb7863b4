#!/usr/bin/env python3
"""Train a DFlash block drafter for SmolLM2-135M-Instruct (self-distilled, MLX on CPU).

The drafter follows z-lab's DFlash layout, the one engines/model/dflash.go loads: a Qwen3-block
stack with no embedding and no head of its own. It reads the target's hidden states at a few tapped
layers (fc + hidden_norm make its context keys and values), embeds [anchor, mask x (B-1)] with the
target's embedding, attends non-causally over [context; block] and projects with the target's
lm_head (tied embedding), drafting B-1 tokens in one forward.

Stages (deterministic for a fixed --seed and library versions):
  1. target: SmolLM2's GGUF read with mx.load (Q4_1 blocks come back as MLX affine-quantized
     arrays, group 32), dequantized to float32 and loaded into mlx-lm's llama Model. llama.cpp's
     converter permutes the rows of Q and K for its rotary layout; load_gguf undoes it.
  2. prompts: a fixed, seeded set of chat prompts (templates x topics). Topics are split: the
     held-out topics never appear in training prompts. Held-out prompts go to heldout.json for
     `hippo bench spec --prompts`.
  3. data: the target's greedy continuation of each prompt under its chat template, batched
     (left-padded prompts, one KV cache), recording the tapped layers' outputs in the same
     forwards. Cached in --data one chunk of --gen-batch prompts at a time (reused when the
     prompts, reply length and taps match; an interrupted run resumes).
  4. training: random anchors in the generated part; per anchor the draft sees the context before
     the anchor and must fill the block with the target's next B-1 tokens. Cross entropy per block
     position, weighted exp(-(k-1)/gamma) (earlier positions decide more of the accepted length).
     The draft layers start as copies of the target's last layers (no q/k norm in llama: those
     start at ones), fc starts by passing the deepest tap through. AdamW, warmup + cosine, a fixed
     wall-clock budget (--minutes) with checkpoints. The cosine runs over --max-steps
     (--schedule steps; a short budget stops it part way) or over the budget itself (--schedule
     clock, so the learning rate always anneals).
  5. evaluation on the held-out prompts: greedy speculative decoding simulated on the target's own
     continuation (what greedy verification accepts): mean accepted drafts per block and the
     acceptance by block position, written to metrics.json and config.json's "hippo" section.

Usage (the justfile's `train-dflash` recipe):
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 .venv/bin/python \
      engines/spec/train/train_dflash.py --gguf .cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \
      --out models/dflash-smollm2
"""

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.llama import Model as Llama, ModelArgs as LlamaArgs

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TEMPLATES = [
    "What is {t}?", "Explain {t} in simple terms.", "Write a short paragraph about {t}.",
    "Give me three facts about {t}.", "Why is {t} important?", "How does {t} work?",
    "Write a short poem about {t}.", "What are the benefits of {t}?", "Describe {t} to a child.",
    "What are common misconceptions about {t}?", "Summarize the history of {t}.",
    "List some tips for learning about {t}.", "What should a beginner know about {t}?",
    "Write a haiku about {t}.", "Compare {t} with something from everyday life.",
    "What are the pros and cons of {t}?", "Tell me a fun story involving {t}.",
    "What questions do scientists still ask about {t}?", "Explain {t} step by step.",
    "Write a short dialogue between two friends about {t}.", "What is the future of {t}?",
    "How would you teach {t} to a class of students?", "Give an example that shows {t}.",
    "What words are useful when talking about {t}?",
]
TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "the Roman Empire", "machine learning",
    "volcanoes", "the human heart", "climate change", "the internet", "gravity", "honey bees",
    "the French Revolution", "electric cars", "vaccines", "the moon", "recycling", "chess",
    "the stock market", "rainbows", "dinosaurs", "coffee", "the Olympic Games", "earthquakes",
    "solar energy", "the printing press", "sleep", "friendship", "music", "the ocean",
    "democracy", "bicycles", "the immune system", "clouds", "ancient Egypt", "exercise",
    "computers", "forests", "the brain", "money", "electricity", "bread baking", "penguins",
    "the Renaissance", "time management", "mountains", "programming", "the solar system",
    "deserts", "libraries", "trains", "gardening", "whales", "the Great Wall of China",
    "nutrition", "weather forecasting", "volunteering", "robots", "the alphabet", "rivers",
    "photography", "kindness", "insects", "the Industrial Revolution", "smartphones",
]
# More training topics, appended after every (template, topic) pair of TOPICS' training split:
# the first prompts, their cached replies and the held-out split stay what they were. None is
# close to a held-out topic (democracy, the ocean, the printing press, ancient Egypt, computers,
# kindness, solar energy, bread baking).
MORE_TOPICS = [
    "clocks", "glaciers", "the Vikings", "origami", "airplanes", "the periodic table", "spiders",
    "jazz", "the Silk Road", "tea", "candles", "chocolate", "bridges", "the human eye",
    "fungi", "the Moon landing", "board games", "umbrellas", "frogs", "the telescope",
    "vitamins", "maps", "wolves", "pottery", "the Amazon rainforest", "knitting", "castles",
    "bacteria", "poetry", "the Andes", "owls", "skateboarding", "rockets", "birds",
    "traffic lights", "public transport", "magnets", "the Arctic", "the Aztecs",
    "volleyball", "elephants", "the compass", "soap", "the speed of light", "farming",
    "the Eiffel Tower", "cats", "dogs", "the calendar", "languages", "museums", "snow",
    "the Milky Way", "archaeology", "horses", "the wheel", "basketball", "the postal service",
    "fireworks", "deserts at night", "the human skeleton", "kites", "hurricanes", "puzzles",
]
IM_START, IM_END, EOT = 1, 2, 0


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------- target from GGUF

def load_gguf(path, dtype=mx.float32):
    """SmolLM2 (llama) from a GGUF file: (mlx-lm llama Model, tokenizer, metadata)."""
    w, meta = mx.load(path, return_metadata=True)
    if str(meta.get("general.architecture")) != "llama":
        sys.exit(f"{path}: architecture {meta.get('general.architecture')}, want llama (SmolLM2)")

    def num(k):
        return meta[f"llama.{k}"].item()

    hidden, heads = int(num("embedding_length")), int(num("attention.head_count"))
    kv = int(num("attention.head_count_kv"))
    args = LlamaArgs(
        model_type="llama", hidden_size=hidden, num_hidden_layers=int(num("block_count")),
        intermediate_size=int(num("feed_forward_length")), num_attention_heads=heads,
        num_key_value_heads=kv, rms_norm_eps=float(num("attention.layer_norm_rms_epsilon")),
        vocab_size=int(num("vocab_size")), rope_theta=float(num("rope.freq_base")),
        head_dim=hidden // heads, tie_word_embeddings="output.weight" not in w,
        max_position_embeddings=int(num("context_length")),
    )

    def get(name):
        if name + ".scales" in w:
            q, s, b = w[name + ".weight"], w[name + ".scales"], w[name + ".biases"]
            # GGUF's Q4_0/Q4_1/Q8_0 blocks hold 32 values: bits from the packed width.
            bits = q.shape[1] * 32 // (s.shape[1] * 32)
            return mx.dequantize(q, s, b, group_size=32, bits=bits).astype(dtype)
        return w[name + ".weight"].astype(dtype)

    def unpermute(a, n):
        # inverse of llama.cpp's permute: reshape(n, 2, d/2, in).swapaxes(1, 2)
        return a.reshape(n, a.shape[0] // n // 2, 2, a.shape[1]).swapaxes(1, 2).reshape(a.shape)

    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    weights = {"model.embed_tokens.weight": get("token_embd"), "model.norm.weight": get("output_norm")}
    if not args.tie_word_embeddings:
        weights["lm_head.weight"] = get("output")
    for i in range(args.num_hidden_layers):
        for g, h in names.items():
            a = get(f"blk.{i}.{g}")
            if g == "attn_q":
                a = unpermute(a, heads)
            elif g == "attn_k":
                a = unpermute(a, kv)
            weights[f"model.layers.{i}.{h}.weight"] = a
    model = Llama(args)
    model.load_weights(list(weights.items()))
    model.eval()
    mx.eval(model.parameters())
    return model, gguf_tokenizer(meta), meta


def gguf_tokenizer(meta):
    """A `tokenizers` byte-level BPE built from the GGUF vocabulary and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    toks = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    types = np.array(meta["tokenizer.ggml.token_type"]) if "tokenizer.ggml.token_type" in meta else None
    special = [t for i, t in enumerate(toks) if types is not None and int(types[i]) == 3]
    tok.add_special_tokens(special)
    return tok


def chat_ids(tok, prompt):
    text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n")
    return tok.encode(text).ids


# ---------------------------------------------------------------- data

def prompt_sets(seed, n_train, n_eval):
    rng = random.Random(seed)
    topics = TOPICS[:]
    rng.shuffle(topics)
    n_ho = max(4, len(topics) // 8)
    ho_topics, tr_topics = topics[:n_ho], topics[n_ho:]
    pairs = [(t, p) for p in tr_topics for t in TEMPLATES]
    rng.shuffle(pairs)
    ho = [(t, p) for p in ho_topics for t in TEMPLATES]
    rng.shuffle(ho)
    heldout = [t.format(t=p) for t, p in ho[:n_eval]]
    # past TOPICS' training pairs, MORE_TOPICS' pairs follow in their own seeded order
    more = [(t, p) for p in MORE_TOPICS for t in TEMPLATES]
    random.Random(seed + 1).shuffle(more)
    pairs += more
    if n_train > len(pairs):
        sys.exit(f"--train-prompts {n_train}: only {len(pairs)} distinct training prompts exist; "
                 "ask for fewer or add topics to MORE_TOPICS")
    train = [t.format(t=p) for t, p in pairs[:n_train]]
    return train, heldout


def generate(model, prompts_ids, max_tokens, batch):
    """Greedy replies with mlx-lm's BatchGenerator (used by --check-only)."""
    gen = BatchGenerator(model, max_tokens=max_tokens, stop_tokens=[[IM_END], [EOT]],
                         sampler=lambda x: mx.argmax(x, axis=-1), completion_batch_size=batch,
                         prefill_batch_size=batch)
    uids = gen.insert(prompts_ids, [max_tokens] * len(prompts_ids))
    out = {u: [] for u in uids}
    while responses := gen.next_generated():
        for r in responses:
            out[r.uid].append(int(r.token))  # the stop token is kept: it is what the target emits
    gen.close()
    return [out[u] for u in uids]


def generate_tapped(model, prompts_ids, max_tokens, taps):
    """Greedy replies for one batch of prompts and, in the same forwards, the tapped layers'
    outputs at every token: [(reply ids, float16 [len(prompt)+len(reply), len(taps)*H])].

    Prompts are left-padded to one length and padding is masked out of attention, so every row
    shares one KV cache offset (RoPE is relative: shifting a row's positions leaves its
    attention unchanged). Reading the taps while generating saves the separate teacher-forced
    pass over prompt and reply (a third of the work)."""
    from mlx_lm.models.cache import KVCache

    n, P = len(prompts_ids), max(len(p) for p in prompts_ids)
    pad = [P - len(p) for p in prompts_ids]
    x = mx.array([[EOT] * q + p for q, p in zip(pad, prompts_ids)])
    padm = mx.arange(P + max_tokens + 1)[None] >= mx.array(pad)[:, None]  # [n, S] real keys
    neg = mx.array(-1e9, mx.float32)
    layers = model.model.layers
    cache = [KVCache() for _ in layers]
    tapset = set(taps)

    def forward(tokens, mask):
        h = model.model.embed_tokens(tokens)
        outs = []
        for i, (layer, c) in enumerate(zip(layers, cache)):
            h = layer(h, mask, cache=c)
            if i in tapset:
                outs.append(h)
        logits = model.model.embed_tokens.as_linear(model.model.norm(h[:, -1]))
        return mx.argmax(logits, -1), mx.concatenate(outs, -1).astype(mx.float16)

    causal = mx.tril(mx.ones((P, P), mx.bool_))
    m = mx.where(causal[None] & padm[:, None, :P], 0.0, neg)[:, None]
    nxt, f = forward(x, m)
    mx.async_eval(nxt, f)
    feats, toks = [f], []
    for t in range(max_tokens):
        toks.append(nxt)
        S = P + t + 1
        m = mx.where(padm[:, None, None, :S], 0.0, neg)
        # the last reply token is fed too: its taps complete the [prompt + reply] features
        nxt, f = forward(nxt[:, None], m)
        feats.append(f)
        mx.async_eval(nxt, f)  # the next step is built while this one runs
        if t % 8 == 7:
            stop = np.array(mx.stack(toks, 1))
            if (((stop == IM_END) | (stop == EOT)).any(1)).all():
                break
    F = np.array(mx.concatenate(feats, 1))
    toks = np.array(mx.stack(toks, 1))
    out = []
    for r in range(n):
        reply = []
        for v in toks[r]:
            reply.append(int(v))  # the stop token is kept: it is what the target emits
            if v in (IM_END, EOT):
                break
        out.append((reply, F[r, pad[r]: P + len(reply)]))
    return out


def tapped_features(model, seqs, taps, batch=8):
    """Teacher-forced outputs of the tapped layers for each sequence: float16 [T, len(taps)*H]
    (the reference generate_tapped is checked against)."""
    deepest = max(taps)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    res = [None] * len(seqs)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        T = max(len(seqs[i]) for i in idx)
        x = mx.array([seqs[i] + [EOT] * (T - len(seqs[i])) for i in idx])  # right padding: causal
        h = model.model.embed_tokens(x)
        outs = {}
        for li, layer in enumerate(model.model.layers[:deepest + 1]):
            h = layer(h, "causal", None)
            if li in taps:
                outs[li] = h
        f = np.array(mx.concatenate([outs[t] for t in taps], axis=-1).astype(mx.float16))
        for j, i in enumerate(idx):
            res[i] = f[j, :len(seqs[i])]
    return res


def build_data(model, tok, prompts, max_tokens, taps, batch, cache_dir, key):
    """Generated replies and tapped features for every prompt, in prompt order, cached in
    cache_dir one chunk of `batch` prompts at a time (an interrupted run resumes)."""
    os.makedirs(cache_dir, exist_ok=True)
    pids = [chat_ids(tok, p) for p in prompts]
    # chunks follow the seeded prompt order: a longer prompt list only adds chunks
    order = list(range(len(pids)))
    seqs, feats = [None] * len(pids), [None] * len(pids)
    t0, made = time.time(), 0
    for c in range(0, len(order), batch):
        idx = order[c:c + batch]
        ck = json.dumps([key, [prompts[i] for i in idx]])
        path = os.path.join(cache_dir, f"chunk-{c // batch:04d}.npz")
        z = np.load(path, allow_pickle=True) if os.path.exists(path) else None
        if z is None or str(z["key"]) != ck:
            t = time.time()
            res = generate_tapped(model, [pids[i] for i in idx], max_tokens, taps)
            ntok = sum(len(r) for r, _ in res)
            made += ntok
            log(f"  chunk {c // batch}: {len(idx)} replies, {ntok} tokens in {time.time() - t:.0f}s "
                f"({ntok / (time.time() - t):.1f} tok/s)")
            np.savez(path, key=ck, seqs=np.array([pids[i] + r for i, (r, _) in zip(idx, res)], dtype=object),
                     feats=np.array([f for _, f in res], dtype=object))
            z = np.load(path, allow_pickle=True)
        for j, i in enumerate(idx):
            seqs[i], feats[i] = [int(v) for v in z["seqs"][j]], z["feats"][j]
    if made:
        log(f"generated {made} reply tokens in {time.time() - t0:.0f}s")
    return seqs, feats, [len(p) for p in pids]


def teacher_hidden(layers, feats, seqs, idx):
    """The target's hidden states after `layers` for the sequences idx, batched and zero-padded
    to the longest, from their cached outputs of one tapped layer (causal, so padding never leaks back)."""
    T = max(len(seqs[i]) for i in idx)
    x = np.zeros((len(idx), T, feats[idx[0]].shape[1]), np.float16)
    for r, i in enumerate(idx):
        x[r, :len(seqs[i])] = feats[i]
    h = mx.array(x).astype(mx.float32)
    for layer in layers:
        h = layer(h, "causal", None)
    return h


def teacher_topk(target, tap, feats, seqs, plen, rows, k, batch=16):
    """Per sequence: top-k draft ids and probabilities of the target's next-token distribution
    (restricted to the rows `rows`) at positions plen-1 .. T-2, from the cached output of layer
    `tap` (feats holds only that tap) run through the target's remaining layers, norm and head."""
    layers = target.model.layers[tap + 1:]
    head_w = target.model.embed_tokens.weight[mx.array(rows)]  # [len(rows), H]
    out = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        h = teacher_hidden(layers, feats, seqs, idx)
        lp = nn.log_softmax(target.model.norm(h) @ head_w.T, -1)
        top = mx.argpartition(-lp, k - 1, -1)[..., :k]
        tp = mx.take_along_axis(lp, top, -1)
        o = mx.argsort(-tp, -1)  # likeliest first
        top, tp = mx.take_along_axis(top, o, -1), mx.take_along_axis(tp, o, -1)
        mx.eval(top, tp)
        top, tp = np.array(top), np.array(tp)
        for r, i in enumerate(idx):
            a, b = plen[i] - 1, len(seqs[i]) - 1
            p = np.exp(tp[r, a:b])
            out[i] = (top[r, a:b].astype(np.int32), (p / p.sum(-1, keepdims=True)).astype(np.float32))
    return out


# ---------------------------------------------------------------- draft

def rope(x, pos, theta):
    """Non-traditional (rotate-half) RoPE at integer positions pos [..., L] broadcast over heads."""
    d = x.shape[-1]
    inv = theta ** (-mx.arange(0, d, 2, dtype=mx.float32) / d)
    ang = pos[..., None].astype(mx.float32) * inv  # [..., L, d/2]
    cos, sin = mx.cos(ang), mx.sin(ang)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class DraftLayer(nn.Module):
    def __init__(self, h, heads, kv, hd, inter, eps):
        super().__init__()
        self.heads, self.kv, self.hd, self.eps = heads, kv, hd, eps
        self.q_proj = nn.Linear(h, heads * hd, bias=False)
        self.k_proj = nn.Linear(h, kv * hd, bias=False)
        self.v_proj = nn.Linear(h, kv * hd, bias=False)
        self.o_proj = nn.Linear(heads * hd, h, bias=False)
        self.q_norm = nn.RMSNorm(hd, eps)
        self.k_norm = nn.RMSNorm(hd, eps)
        self.gate_proj = nn.Linear(h, inter, bias=False)
        self.up_proj = nn.Linear(h, inter, bias=False)
        self.down_proj = nn.Linear(inter, h, bias=False)
        self.input_layernorm = nn.RMSNorm(h, eps)
        self.post_attention_layernorm = nn.RMSNorm(h, eps)


class Draft(nn.Module):
    """DFlash draft for training: many blocks per sequence in one forward, each block seeing only
    the context before its anchor (the additive mask)."""

    def __init__(self, cfg):
        super().__init__()
        h, n = cfg["hidden_size"], len(cfg["dflash_config"]["target_layer_ids"])
        self.cfg, self.theta, eps = cfg, cfg["rope_theta"], cfg["rms_norm_eps"]
        self.fc = nn.Linear(n * h, h, bias=False)
        self.hidden_norm = nn.RMSNorm(h, eps)
        self.norm = nn.RMSNorm(h, eps)
        self.layers = [DraftLayer(h, cfg["num_attention_heads"], cfg["num_key_value_heads"],
                                  cfg["head_dim"], cfg["intermediate_size"], eps)
                       for _ in range(cfg["num_hidden_layers"])]

    def __call__(self, block, bpos, feats, cpos, mask):
        """block [N, Lb, H] embeddings at positions bpos [N, Lb]; feats [N, Lc, taps*H] at cpos
        [N, Lc]; mask [N, 1, Lb, Lc+Lb] additive. Returns normed hidden states [N, Lb, H]."""
        c = self.hidden_norm(self.fc(feats))
        h = block
        N, Lb, _ = block.shape
        Lc = c.shape[1]
        for l in self.layers:
            x = l.input_layernorm(h)
            split = lambda a, L, k: a.reshape(N, L, k, -1).transpose(0, 2, 1, 3)
            q = rope(l.q_norm(split(l.q_proj(x), Lb, l.heads)), bpos[:, None], self.theta)
            bk = rope(l.k_norm(split(l.k_proj(x), Lb, l.kv)), bpos[:, None], self.theta)
            ck = rope(l.k_norm(split(l.k_proj(c), Lc, l.kv)), cpos[:, None], self.theta)
            bv, cv = split(l.v_proj(x), Lb, l.kv), split(l.v_proj(c), Lc, l.kv)
            k = mx.concatenate([ck, bk], axis=2)
            v = mx.concatenate([cv, bv], axis=2)
            o = mx.fast.scaled_dot_product_attention(q, k, v, scale=l.hd ** -0.5, mask=mask)
            h = h + l.o_proj(o.transpose(0, 2, 1, 3).reshape(N, Lb, -1))
            n = l.post_attention_layernorm(h)
            h = h + l.down_proj(nn.silu(l.gate_proj(n)) * l.up_proj(n))
        return self.norm(h)


def draft_config(target, layers, block, taps, mask_id):
    a = target.args
    return {
        "architectures": ["DFlashDraftModel"], "model_type": "qwen3",
        "hidden_size": a.hidden_size, "num_hidden_layers": layers,
        "num_attention_heads": a.num_attention_heads, "num_key_value_heads": a.num_key_value_heads,
        "head_dim": a.hidden_size // a.num_attention_heads, "intermediate_size": a.intermediate_size,
        "vocab_size": a.vocab_size, "rms_norm_eps": a.rms_norm_eps, "rope_theta": a.rope_theta,
        "rope_scaling": None, "max_position_embeddings": a.max_position_embeddings,
        "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
        "layer_types": ["full_attention"] * layers, "use_sliding_window": False,
        "block_size": block, "num_target_layers": a.num_hidden_layers, "torch_dtype": "bfloat16",
        "dflash_config": {"mask_token_id": mask_id, "target_layer_ids": taps},
    }


def init_from_target(draft, target, taps):
    """Draft layer i <- target layer L-n+i (attention and MLP), norm <- target's final norm, fc
    passes the deepest tap through."""
    tl = target.model.layers
    n = len(draft.layers)
    for i, dl in enumerate(draft.layers):
        t = tl[len(tl) - n + i]
        for a, b in [("q_proj", t.self_attn.q_proj), ("k_proj", t.self_attn.k_proj),
                     ("v_proj", t.self_attn.v_proj), ("o_proj", t.self_attn.o_proj),
                     ("gate_proj", t.mlp.gate_proj), ("up_proj", t.mlp.up_proj),
                     ("down_proj", t.mlp.down_proj)]:
            getattr(dl, a).weight = mx.array(b.weight)
        dl.input_layernorm.weight = mx.array(t.input_layernorm.weight)
        dl.post_attention_layernorm.weight = mx.array(t.post_attention_layernorm.weight)
    draft.norm.weight = mx.array(target.model.norm.weight)
    draft.hidden_norm.weight = mx.array(tl[len(tl) - n].input_layernorm.weight)
    H = target.args.hidden_size
    fc = mx.zeros((H, len(taps) * H))
    j = taps.index(max(taps))
    fc[:, j * H:(j + 1) * H] = mx.eye(H)
    draft.fc.weight = fc + 0.01 * mx.random.normal(fc.shape) / math.sqrt(len(taps) * H)


# ---------------------------------------------------------------- batches

def make_batch(rng, data, B, nb, Tmax, embed, mask_id, train=True, anchors=None):
    """Sequences with nb anchors each. Returns the draft's inputs and targets (+ weights); with a
    teacher in data (a 4th element, teacher_topk's per-sequence top-k rows), also its top-k ids and
    probabilities [N, nb, B-1, k] for each block position's token (zero where invalid)."""
    seqs, feats, plen = data[:3]
    teacher = data[3] if len(data) > 3 else None
    N = len(anchors) if anchors is not None else None
    picks = anchors
    if picks is None:
        picks = []
        while len(picks) < BATCH_SEQS:
            i = rng.randrange(len(seqs))
            T = len(seqs[i])
            lo, hi = plen[i], T - 2
            if hi <= lo:
                continue
            picks.append((i, sorted(rng.sample(range(lo, hi + 1), min(nb, hi - lo + 1)))))
    Nq = len(picks)
    F = np.zeros((Nq, Tmax, feats[0].shape[1]), np.float16)
    ids = np.full((Nq, nb, B), mask_id, np.int32)
    tgt = np.zeros((Nq, nb, B - 1), np.int32)
    valid = np.zeros((Nq, nb, B - 1), np.float32)
    bpos = np.zeros((Nq, nb, B), np.int32)
    maskc = np.full((Nq, nb, B, Tmax), -1e9, np.float32)
    maskb = np.full((Nq, nb, B, nb, B), -1e9, np.float32)
    if teacher is not None:
        kt = teacher[0][0].shape[1]
        tid = np.zeros((Nq, nb, B - 1, kt), np.int32)
        tpr = np.zeros((Nq, nb, B - 1, kt), np.float32)
    for r, (i, an) in enumerate(picks):
        s, T = seqs[i], len(seqs[i])
        F[r, :min(T, Tmax)] = feats[i][:Tmax]
        for j in range(nb):
            if j >= len(an):
                continue  # unused block: fully masked, zero weight
            a = an[j]
            ids[r, j, 0] = s[a]
            bpos[r, j] = np.arange(a, a + B)
            for k in range(1, B):
                if a + k < T:
                    tgt[r, j, k - 1] = s[a + k]
                    valid[r, j, k - 1] = 1
                    if teacher is not None:
                        # the target's distribution of token a+k, given the reply up to a+k-1
                        tid[r, j, k - 1] = teacher[i][0][a + k - plen[i]]
                        tpr[r, j, k - 1] = teacher[i][1][a + k - plen[i]]
            maskc[r, j, :, :min(a, Tmax)] = 0
            maskb[r, j, :, j, :] = 0
    mask = np.concatenate([maskc.reshape(Nq, nb * B, Tmax), maskb.reshape(Nq, nb * B, nb * B)], -1)
    block = embed(mx.array(ids.reshape(Nq, nb * B)))
    out = (block, mx.array(bpos.reshape(Nq, nb * B)), mx.array(F).astype(mx.float32),
           mx.broadcast_to(mx.arange(Tmax)[None], (Nq, Tmax)), mx.array(mask)[:, None],
           mx.array(tgt.reshape(Nq, nb, B - 1)), mx.array(valid.reshape(Nq, nb, B - 1)))
    if teacher is not None:
        out += (mx.array(tid), mx.array(tpr))
    return out


BATCH_SEQS = 4
EVAL_SEQS = 16  # held-out replies replayed (one draft forward per block: slow on a loaded CPU)


def heldout_blocks(draft, predict, embed, data, B, mask_id, Tmax, stride=3, nb=8):
    """Teacher-forced held-out check, batched: blocks anchored at every `stride`-th generated
    position of each held-out reply. Greedy verification of a block accepts the drafts' longest
    prefix matching the target's continuation, so the mean prefix length over these anchors
    estimates the accepted drafts per block (position k: share of blocks accepting >= k)."""
    seqs = data[0]
    rows = []
    for i in range(len(seqs)):
        an = list(range(data[2][i], len(seqs[i]) - 1, stride))
        rows += [(i, an[j:j + nb]) for j in range(0, len(an), nb)]
    lens = []
    for r in range(0, len(rows), 8):
        inp = make_batch(None, data, B, nb, Tmax, embed, mask_id, anchors=rows[r:r + 8])
        h = draft(*inp[:5])
        N = h.shape[0]
        pred = predict(h.reshape(N, nb, B, -1)[:, :, 1:])
        ok = ((pred == inp[5]) * inp[6]).astype(mx.int32)
        pre = np.array(mx.cumprod(ok, axis=-1).sum(-1))  # matching prefix per block
        for j, (_, an) in enumerate(rows[r:r + 8]):
            lens += pre[j, :len(an)].tolist()
    lens = np.array(lens)
    return float(lens.mean()), [float((lens >= k).mean()) for k in range(1, B)]


def simulate(draft, predict, embed, data, B, mask_id, Tmax):
    """Greedy DFlash decoding replayed on each held-out continuation: from the first generated
    token, draft B-1, accept the matching prefix, move past it plus the target's correction."""
    seqs, feats, plen = data
    acc_lens, by_pos, blocks = [], np.zeros(B - 1), 0
    for i in range(min(len(seqs), EVAL_SEQS)):
        s, T = seqs[i], len(seqs[i])
        a = plen[i]  # the anchor is the first token the target generated
        anchors = []
        # Replay sequentially needs the draft's predictions; run one anchor at a time (cheap).
        while a < T - 1:
            inp = make_batch(None, data, B, 1, Tmax, embed, mask_id, anchors=[(i, [a])])
            h = draft(*inp[:5])
            pred = np.array(predict(h[:, 1:]))[0]
            m = 0
            while m < B - 1 and a + 1 + m < T and pred[m] == s[a + 1 + m]:
                m += 1
            by_pos[:m] += 1
            blocks += 1
            acc_lens.append(m)
            a += m + 1
    return float(np.mean(acc_lens)), (by_pos / max(blocks, 1)).tolist(), blocks


def clock_lr(lr, frac):
    """The learning rate at fraction frac of a wall-clock budget: linear warmup over the first 3%,
    then a cosine down to 5% of lr (--schedule clock here; train_ardraft.py's only schedule)."""
    if frac < 0.03:
        return lr * max(frac / 0.03, 0.02)
    f = min((frac - 0.03) / 0.97, 1.0)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * f)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=".cache/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="models/dflash-smollm2")
    ap.add_argument("--data", default="", help="data cache directory (default models/dflash-data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-prompts", type=int, default=384)
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--gen-batch", type=int, default=128)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--taps", default="1,8,14,20,27")
    ap.add_argument("--mask-id", type=int, default=4)
    ap.add_argument("--anchors", type=int, default=8, help="blocks per sequence per step")
    ap.add_argument("--batch", type=int, default=4, help="sequences per step")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--gamma", type=float, default=5.0, help="position weight decay")
    ap.add_argument("--kd", type=float, default=0.0,
                    help="weight of distillation from the target's top-k distribution (0: its greedy token only)")
    ap.add_argument("--topk", type=int, default=32, help="teacher ids kept per position for --kd")
    ap.add_argument("--head-vocab", choices=["train", "full"], default="train",
                    help="draft among the tokens of the training replies (written to draft_vocab.json) or the whole vocabulary")
    ap.add_argument("--minutes", type=float, default=12.0, help="training wall-clock budget")
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--schedule", choices=["steps", "clock"], default="steps",
                    help="steps: warmup, then cosine over --max-steps (cut short by --minutes); "
                    "clock: warmup, then cosine over the --minutes budget, so training always anneals")
    ap.add_argument("--eval-every", type=int, default=100, help="steps between checkpoints + held-out checks")
    ap.add_argument("--check-only", action="store_true", help="load the target, print a greedy reply, exit")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--data-only", action="store_true", help="build the data cache and exit")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/model.safetensors (fresh optimizer)")
    args = ap.parse_args()
    global BATCH_SEQS
    BATCH_SEQS = args.batch
    mx.random.seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    taps = [int(x) for x in args.taps.split(",")]

    t0 = time.time()
    target, tok, meta = load_gguf(args.gguf)
    target.freeze()
    log(f"target loaded in {time.time() - t0:.1f}s: {target.args.num_hidden_layers} layers, hidden {target.args.hidden_size}")
    if args.check_only:
        ids = chat_ids(tok, "What is the capital of France?")
        out = generate(target, [ids], 48, 1)[0]
        print(repr(tok.decode(out)))
        return

    train_p, eval_p = prompt_sets(args.seed, args.train_prompts, args.eval_prompts)
    with open(os.path.join(args.out, "heldout.json"), "w") as f:
        json.dump(eval_p, f, indent=1)
    data_dir = args.data or os.path.join("models", "dflash-data")
    key = json.dumps(["tapped-greedy-v2", args.gguf.rsplit("/", 1)[-1], args.max_tokens, taps])
    t = time.time()
    seqs, feats, plen = build_data(target, tok, train_p, args.max_tokens, taps, args.gen_batch,
                                   os.path.join(data_dir, "train"), key)
    hs, hf, hp = build_data(target, tok, eval_p, args.max_tokens, taps, args.gen_batch,
                            os.path.join(data_dir, "heldout"), key)
    seqs, feats, plen = seqs + hs, feats + hf, plen + hp
    ntr = sum(len(s) - p for s, p in zip(seqs[:len(train_p)], plen))
    log(f"data: {len(train_p)} train replies ({ntr} tokens), {len(eval_p)} held-out ({time.time() - t:.0f}s)")
    print("sample:", repr(tok.decode(seqs[0][plen[0]:])[:300]), flush=True)
    if args.data_only:
        return
    nt = len(train_p)
    train = (seqs[:nt], feats[:nt], plen[:nt])
    held = (seqs[nt:], feats[nt:], plen[nt:])
    Tmax = max(len(s) for s in seqs)

    cfg = draft_config(target, args.layers, args.block, taps, args.mask_id)
    draft = Draft(cfg)
    embed = target.model.embed_tokens
    # The loss normalises over the tokens the training continuations use, not the whole
    # vocabulary: the head is most of a step's cost on CPU, and the drafts only need to win among
    # tokens the target actually emits here. The logits of the other tokens are never trained
    # down, so by default (--head-vocab train) the drafter drafts among these tokens only at
    # evaluation too, and ships them as draft_vocab.json for Hippo's drafter to do the same.
    used = sorted({int(x) for i, sq in enumerate(train[0]) for x in sq[train[2][i]:]})
    remap_np = np.zeros(target.args.vocab_size, np.int32)
    remap_np[used] = np.arange(len(used))
    head_w = embed.weight[mx.array(used)]
    remap = mx.array(remap_np)
    if args.head_vocab == "train":
        used_ids = mx.array(used)
        predict = lambda h: used_ids[mx.argmax(h @ head_w.T, -1)]
        vocab = {"target_vocab_size": target.args.vocab_size, "ids": used}
    else:
        predict = lambda h: mx.argmax(embed.as_linear(h), -1)
        vocab = None
    ckpt = os.path.join(args.out, "model.safetensors")
    B = args.block
    if args.eval_only:
        load_draft(draft, ckpt)
        write_vocab(args.out, vocab)
    else:
        steps0 = 0
        if args.resume:
            load_draft(draft, ckpt)
            steps0 = json.load(open(os.path.join(args.out, "config.json"))).get("hippo", {}).get("steps", 0)
            log(f"resuming after {steps0} steps")
        else:
            init_from_target(draft, target, taps)
        mx.eval(draft.parameters())
        w = mx.exp(-mx.arange(B - 1, dtype=mx.float32) / args.gamma)
        log(f"training head over {len(used)} of {target.args.vocab_size} tokens")
        if args.kd > 0:
            # the teacher: the target's next-token distribution at every reply position, from the
            # cached deepest tap through the target's last layers, over the training head's rows
            te = time.time()
            j, H = taps.index(max(taps)), target.args.hidden_size
            deep = [f[:, j * H:(j + 1) * H] for f in train[1]]
            teach = teacher_topk(target, max(taps), deep, train[0], train[2], used, args.topk)
            del deep
            hit = np.mean([float((t[0][:, 0] == remap_np[np.array(s[p:])]).mean())
                           for t, s, p in zip(teach, train[0], train[2])])
            log(f"teacher top-{args.topk} computed in {time.time() - te:.0f}s; its top-1 is the reply's "
                f"token at {hit:.4f} of training positions")
            train = train + (teach,)

        def loss_fn(m, block, bpos, F, cpos, mask, tgt, valid, tid=None, tpr=None):
            h = m(block, bpos, F, cpos, mask)
            N = h.shape[0]
            h = h.reshape(N, args.anchors, B, -1)[:, :, 1:]
            logits = h @ head_w.T
            tgt = remap[tgt]
            ce = nn.losses.cross_entropy(logits, tgt, reduction="none")
            if tid is not None:
                soft = -(tpr * mx.take_along_axis(nn.log_softmax(logits, -1), tid, -1)).sum(-1)
                ce = (1 - args.kd) * ce + args.kd * soft
            wt = valid * w
            acc = ((mx.argmax(logits, -1) == tgt) * valid).sum() / valid.sum()
            return (ce * wt).sum() / wt.sum(), acc

        lg = nn.value_and_grad(draft, loss_fn)
        if args.schedule == "steps":
            sched = optim.join_schedules(
                [optim.linear_schedule(1e-6, args.lr, 30),
                 optim.cosine_decay(args.lr, args.max_steps, args.lr * 0.05)], [30])
            opt = optim.AdamW(learning_rate=sched, weight_decay=0.01)
        else:
            opt = optim.AdamW(learning_rate=args.lr, weight_decay=0.01)

        state = [draft.state, opt.state]

        @partial_compile(state)
        def step(*batch):
            (l, acc), g = lg(draft, *batch)
            g, _ = optim.clip_grad_norm(g, 1.0)
            opt.update(draft, g)
            return l, acc

        rng = random.Random(args.seed + steps0)  # a resumed run draws other batches
        curve = []
        t = time.time()
        budget = args.minutes * 60
        s = 0
        ema = None
        while s < args.max_steps and time.time() - t < budget:
            batch = make_batch(rng, train, B, args.anchors, Tmax, embed, args.mask_id)
            if args.schedule == "clock":
                opt.learning_rate = mx.array(clock_lr(args.lr, (time.time() - t) / budget), mx.float32)
            l, acc = step(*batch)
            mx.eval(state, l, acc)
            s += 1
            ema = (float(l), float(acc)) if ema is None else (0.95 * ema[0] + 0.05 * float(l), 0.95 * ema[1] + 0.05 * float(acc))
            if s % 10 == 0:
                log(f"step {s} loss {ema[0]:.3f} token-acc {ema[1]:.3f} lr {float(opt.learning_rate):.2e} "
                    f"({(time.time() - t) / s:.2f}s/step)")
            if s % args.eval_every == 0:
                save(draft, cfg, args.out, {"steps": steps0 + s}, vocab)
                te = time.time()
                m, bp = heldout_blocks(draft, predict, embed, held, B, args.mask_id, Tmax)
                curve.append({"step": steps0 + s, "minutes": round((time.time() - t) / 60, 1),
                              "train_loss": round(ema[0], 3), "train_acc": round(ema[1], 3),
                              "heldout_accepted": round(m, 3), "heldout_by_position": [round(x, 3) for x in bp[:8]]})
                log(f"  held-out (teacher-forced): {m:.3f} accepted per block; by position "
                    + " ".join(f"{x:.2f}" for x in bp[:8]) + f" ({time.time() - te:.0f}s)")
                t += time.time() - te  # evaluation does not count against the training budget
        info = {"steps": steps0 + s, "train_seconds": round(time.time() - t), "lr": args.lr,
                "gamma": args.gamma, "kd": args.kd, "topk": args.topk, "batch": args.batch,
                "anchors": args.anchors,
                "schedule": args.schedule, "curve": curve}
        save(draft, cfg, args.out, info, vocab)
        log(f"trained {s} steps in {time.time() - t:.0f}s")
    t = time.time()
    mean, by_pos, blocks = simulate(draft, predict, embed, held, B, args.mask_id, Tmax)
    log(f"held-out: mean accepted per block of {B} = {mean:.2f} over {blocks} blocks ({time.time() - t:.0f}s)")
    log("acceptance by position: " + " ".join(f"{p:.2f}" for p in by_pos))
    c = json.load(open(os.path.join(args.out, "config.json")))
    metrics = {"train_replies": nt, "train_reply_tokens": ntr, "max_tokens": args.max_tokens,
               "steps": c["hippo"].get("steps"), "train_seconds": c["hippo"].get("train_seconds"),
               "block_size": B, "layers": args.layers,
               "head_vocab": len(used) if vocab else target.args.vocab_size,
               "heldout_prompts": min(len(held[0]), EVAL_SEQS), "heldout_blocks": blocks,
               "mean_accepted": round(mean, 3), "accept_by_position": [round(p, 3) for p in by_pos]}
    for b in (4, 8, 16):
        if b <= B:
            # a block of b verifies b-1 drafts: accepted = min(prefix, b-1)
            metrics[f"mean_accepted_b{b}"] = round(sum(by_pos[:b - 1]), 3)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(dict(metrics, curve=c["hippo"].get("curve", [])), f, indent=1)
    c.setdefault("hippo", {}).update(metrics)
    json.dump(c, open(os.path.join(args.out, "config.json"), "w"), indent=1)


def partial_compile(state):
    def wrap(f):
        return mx.compile(f, inputs=state, outputs=state)
    return wrap


# Training names -> z-lab's (engines/model/dflash.go).
RENAME = {f"{a}.": f"self_attn.{a}." for a in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")}
RENAME.update({f"{a}.": f"mlp.{a}." for a in ("gate_proj", "up_proj", "down_proj")})


def hub_name(k):
    parts = k.split(".", 2)
    if parts[0] == "layers":
        for a, b in RENAME.items():
            if parts[2].startswith(a):
                return f"layers.{parts[1]}.{b}{parts[2][len(a):]}"
    return k


def load_draft(draft, path):
    back = {hub_name(k): k for k, _ in tree_flatten(draft.parameters())}
    w = mx.load(path)
    draft.load_weights([(back[k], v.astype(mx.float32)) for k, v in w.items()])


def write_vocab(out, vocab):
    """draft_vocab.json: the target ids the drafter drafts among (none: remove a stale file)."""
    path = os.path.join(out, "draft_vocab.json")
    if vocab is None:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(path, "w") as f:
        json.dump(vocab, f)


def save(draft, cfg, out, info, vocab):
    ws = {hub_name(k): v.astype(mx.bfloat16) for k, v in tree_flatten(draft.parameters())}
    tmp = os.path.join(out, "model.tmp.safetensors")
    mx.save_safetensors(tmp, ws, metadata={"format": "mlx"})
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    c = dict(cfg)
    c["hippo"] = dict(info, trained_by="engines/spec/train/train_dflash.py")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    write_vocab(out, vocab)


if __name__ == "__main__":
    main()
