package model

// DFlash block drafters (z-lab, "DFlash: Block Diffusion for Flash Speculative Decoding",
// arXiv 2602.06036). The layout and forward follow z-lab's reference code, read in
// github.com/z-lab/dflash: dflash/model.py (PyTorch: DFlashDraftModel, Qwen3DFlashAttention,
// dflash_generate) and dflash/model_mlx.py (MLX: DFlashAttention, DFlashDraftModel.hidden_states,
// _stream_generate).
//
//   - config.json is a Qwen3 config (model_type "qwen3", architectures ["DFlashDraftModel"]) plus
//     block_size and num_target_layers at the top level and dflash_config {mask_token_id,
//     target_layer_ids}. The reference reads each DFlash field from dflash_config first, then from
//     the top level (_draft_value), and so does ParseDFlashConfig.
//   - tensors, unprefixed (the reference's DFlashDraftModel is the PreTrainedModel itself, so its
//     attributes are the names): fc.weight [hidden, len(target_layer_ids)*hidden],
//     hidden_norm.weight, layers.N.{self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm,
//     mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}.weight, norm.weight. No
//     embedding and no lm_head: the draft embeds with the target's embed_tokens and projects with
//     the target's lm_head. Some converters write "model.layers..." (llama.cpp's DFlash converter
//     tests accept both), so a "model." prefix is tolerated.
//   - target_layer_ids index the target's decoder layers from 0; the feature of layer i is that
//     layer's output (HF hidden_states[i+1], the MLX reference hooks the layer). For the last
//     target layer the two differ (HF applies the final norm there); Hippo records the raw output,
//     as the MLX reference does. z-lab places the taps with build_target_layer_ids (start 1,
//     end N-3, rounded even spacing; quoted with a "match z-lab" note in vllm-project/speculators
//     src/speculators/models/dflash/utils.py): [1, 9, 17, 25, 33] for 36 layers.
//   - forward: ctx = hidden_norm(fc(concat of the tapped layers, in target_layer_ids order)); every
//     draft layer attends, without a mask (full_attention layers are non-causal: is_causal is only
//     set for sliding layers), from the block's queries to [context keys; block keys]. Context keys
//     and values are projected from ctx (not normed by input_layernorm) by each layer's own
//     k_proj/v_proj with k_norm, rotated at the context positions and cached; the block's are
//     recomputed every call and never cached. Block positions continue after the context, so the
//     anchor (the last accepted token) sits at the first block position.
//   - block input: [anchor, mask_token_id x (block_size-1)], embedded by the target; the logits of
//     block positions 1.. are the drafts (draft_hidden[:, 1:]). After a verify step the new
//     context is the anchor and the accepted drafts, with the target's hidden states from that
//     verify forward.
//
// Checked for z-lab/Qwen3-4B-DFlash-b16: 5 layers, hidden 2560, 32 query and 8 KV heads of 128,
// intermediate 9728 and 5 taps give 537,427,200 parameters, the count a public DFlash training
// recipe quotes for that checkpoint; the taps, mask 151669, block 16, num_target_layers 36 and the
// field layout match z-lab Qwen3 draft configs quoted by third-party tests (vllm-project/speculators,
// sglang, mlc-llm). Not read: the 4B checkpoint's own config.json; its rope_theta 1e6,
// rms_norm_eps 1e-6 and max_position_embeddings 40960 are Qwen3-4B's and the 8B draft's.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// ErrNotDFlash reports a checkpoint that is not a DFlash draft (or a DFlash variant Hippo does not
// run).
var ErrNotDFlash = errors.New("not a DFlash draft checkpoint")

// DFlashConfig is a DFlash draft's config.json: a Qwen3 config for the draft layers plus the
// DFlash fields.
type DFlashConfig struct {
	*Config
	// BlockSize is the number of positions one draft forward fills: the anchor plus
	// BlockSize-1 drafts.
	BlockSize int
	// MaskTokenID fills the block positions being drafted.
	MaskTokenID int
	// TargetLayerIDs lists the target layers (from 0) whose outputs condition the draft, in the
	// order fc expects them.
	TargetLayerIDs []int
	// NumTargetLayers is the depth of the target the draft was trained for (0 when unstated).
	NumTargetLayers int
}

// ReadDFlashConfig reads and validates dir/config.json of a DFlash draft.
func ReadDFlashConfig(dir string) (*DFlashConfig, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model: read dflash config: %w (is %s a DFlash draft checkpoint directory?)", err, dir)
	}
	return ParseDFlashConfig(b, path)
}

// ParseDFlashConfig parses a DFlash draft's config.json bytes; name is used in error messages.
func ParseDFlashConfig(b []byte, name string) (*DFlashConfig, error) {
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("model: %s: invalid JSON: %w", name, err)
	}
	dc, _ := raw["dflash_config"].(map[string]any)
	archs, _ := raw["architectures"].([]any)
	isDFlash := dc != nil
	for _, a := range archs {
		switch a {
		case "DFlashDraftModel":
			isDFlash = true
		case "DFlash2DraftModel":
			return nil, fmt.Errorf("model: %s: DFlash2 drafts (dynamic convolutions and a candidate selector) are not supported: %w", name, ErrNotDFlash)
		}
	}
	if !isDFlash {
		return nil, fmt.Errorf("model: %s: architectures %v and no dflash_config: %w (give the draft's directory, not the target's)", name, archs, ErrNotDFlash)
	}
	// The reference reads dflash_config first, then the top level (_draft_value).
	field := func(k string) (any, bool) {
		if v, ok := dc[k]; ok && v != nil {
			return v, true
		}
		v, ok := raw[k]
		return v, ok && v != nil
	}
	if v, ok := dc["projector_type"]; ok && v != nil {
		return nil, fmt.Errorf("model: %s: dflash_config.projector_type %v (a Domino variant) is not supported: %w", name, v, ErrNotDFlash)
	}
	// Draft layers are Qwen3 blocks whatever the target (the reference builds them from Qwen3
	// classes), so the decoder fields are parsed as a qwen3 config.
	if mt, _ := raw["model_type"].(string); mt != "qwen3" {
		raw["model_type"] = "qwen3"
		b, _ = json.Marshal(raw)
	}
	c, err := ParseConfig(b, name)
	if err != nil {
		return nil, err
	}
	d := &DFlashConfig{Config: c, BlockSize: 16}
	bad := func(format string, args ...any) (*DFlashConfig, error) {
		return nil, fmt.Errorf("model: %s: "+format, append([]any{name}, args...)...)
	}
	if v, ok := field("block_size"); ok {
		n, ok := asInt(v)
		if !ok || n < 2 {
			return bad("block_size %v: must be an integer >= 2 (the anchor plus at least one draft)", v)
		}
		d.BlockSize = n
	}
	v, ok := field("mask_token_id")
	if !ok {
		return bad("dflash_config.mask_token_id is missing: %w", ErrNotDFlash)
	}
	if d.MaskTokenID, ok = asInt(v); !ok || d.MaskTokenID < 0 {
		return bad("mask_token_id %v: must be a token id", v)
	}
	v, ok = field("target_layer_ids")
	ids, _ := v.([]any)
	if !ok || len(ids) == 0 {
		return bad("dflash_config.target_layer_ids is missing or empty: %w", ErrNotDFlash)
	}
	for _, x := range ids {
		n, ok := asInt(x)
		if !ok || n < 0 {
			return bad("target_layer_ids %v: %v is not a layer index", v, x)
		}
		d.TargetLayerIDs = append(d.TargetLayerIDs, n)
	}
	if v, ok := field("num_target_layers"); ok {
		if d.NumTargetLayers, ok = asInt(v); !ok || d.NumTargetLayers <= 0 {
			return bad("num_target_layers %v: must be a positive integer", v)
		}
	}
	if lt, ok := raw["layer_types"].([]any); ok {
		for _, t := range lt {
			if t != "full_attention" {
				return bad("layer_types has %v: only full_attention draft layers are supported", t)
			}
		}
	}
	for _, k := range []string{"is_causal", "causal"} {
		if v, ok := field(k); ok && v == true {
			return bad("%s is true: causal DFlash drafts are not supported (z-lab's Qwen3 drafts attend to the whole block)", k)
		}
	}
	return d, nil
}

func asInt(v any) (int, bool) {
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) || math.Abs(f) > 1<<31 {
		return 0, false
	}
	return int(f), true
}

// CheckTarget reports whether the draft can draft for a target with config t: same hidden size
// (the draft consumes the target's embeddings and feeds its lm_head) and vocabulary, and every
// tapped layer inside the target.
func (d *DFlashConfig) CheckTarget(t *Config) error {
	if d.HiddenSize != t.HiddenSize {
		return fmt.Errorf("model: dflash draft has hidden_size %d, the target %d: it was trained for another target", d.HiddenSize, t.HiddenSize)
	}
	if d.VocabSize != t.VocabSize {
		return fmt.Errorf("model: dflash draft has vocab_size %d, the target %d: it was trained for another tokenizer", d.VocabSize, t.VocabSize)
	}
	for _, id := range d.TargetLayerIDs {
		if id >= t.NumLayers {
			return fmt.Errorf("model: dflash target_layer_ids %v: layer %d is outside the target's %d layers (a draft for a deeper target?)", d.TargetLayerIDs, id, t.NumLayers)
		}
	}
	if d.NumTargetLayers != 0 && d.NumTargetLayers != t.NumLayers {
		return fmt.Errorf("model: dflash draft was trained for a target of %d layers (num_target_layers), this target has %d", d.NumTargetLayers, t.NumLayers)
	}
	if d.MaskTokenID >= t.VocabSize {
		return fmt.Errorf("model: dflash mask_token_id %d is outside the target's vocabulary of %d", d.MaskTokenID, t.VocabSize)
	}
	return nil
}

// Unembedder is an optional ability of a Model: the lm_head without the final norm, for drafters
// that bring their own norm and share the target's head (DFlash). Same lifetime rules as Head.
type Unembedder interface {
	// Unembed maps hidden states [B, L, hidden] to logits [B, L, vocab].
	Unembed(h mlx.Array) mlx.Array
}

var _ Unembedder = (*decoder)(nil)

// Unembed implements Unembedder: Head without the final norm.
func (d *decoder) Unembed(h mlx.Array) mlx.Array {
	if d.lmHead != nil {
		return d.lmHead.Forward(h)
	}
	return d.embed.AsLinear(h)
}

// DFlash is a loaded DFlash draft model. It has no embedding and no head: callers embed the block
// with the target's Embed and project with the target's Unembed. Methods build lazy graphs on the
// MLX thread; Close frees the weights.
type DFlash struct {
	cfg        *DFlashConfig
	fc         *Linear
	hiddenNorm mlx.Array
	norm       mlx.Array
	layers     []decoderLayer
	rope       *rope
	eps        float32
	heads, kvh int
	scale      float32
	weights    *Weights
}

// LoadDFlash reads the DFlash draft in dir in the compute dtype (the target's: the draft consumes
// its hidden states) and checks it against the target's config. Must run on the MLX thread.
func LoadDFlash(dir string, compute mlx.DType, target *Config) (*DFlash, error) {
	c, err := ReadDFlashConfig(dir)
	if err != nil {
		return nil, err
	}
	if err := c.CheckTarget(target); err != nil {
		return nil, fmt.Errorf("%w (draft %s)", err, dir)
	}
	w, err := openWeights(dir, c.Config, compute)
	if err != nil {
		return nil, err
	}
	d, err := newDFlash(c, w)
	if err != nil {
		w.Free()
		return nil, fmt.Errorf("model: dflash draft: %w", err)
	}
	if extra := w.Unused(); len(extra) > 0 {
		w.Free()
		return nil, fmt.Errorf("model: %s: %d tensors are not used by a DFlash draft (first: %q): %w", dir, len(extra), extra[0], ErrCheckpoint)
	}
	return d, nil
}

func newDFlash(c *DFlashConfig, w *Weights) (*DFlash, error) {
	hd := c.KVHeadDim()
	d := &DFlash{
		cfg: c, eps: float32(c.RMSNormEps), heads: c.NumHeads, kvh: c.NumKVHeads,
		scale: float32(math.Pow(float64(hd), -0.5)), weights: w,
	}
	if c.RopeTheta == 0 {
		return nil, fmt.Errorf("rope_theta is missing from config.json")
	}
	var err error
	if d.rope, err = newRope(c.Config, w, hd, c.RopeTheta); err != nil {
		return nil, err
	}
	// z-lab's checkpoints name tensors without the "model." prefix; some converters add it.
	name := func(n string) string {
		if !w.Has(n) && w.Has("model."+n) {
			return "model." + n
		}
		return n
	}
	h := c.HiddenSize
	lin := func(n string, out, in int) *Linear {
		if err != nil {
			return nil
		}
		var l *Linear
		l, err = w.Linear(name(n), out, in, false)
		return l
	}
	vec := func(n string, size int) mlx.Array {
		if err != nil {
			return mlx.Array{}
		}
		var a mlx.Array
		a, err = w.Tensor(name(n)+".weight", size)
		return a
	}
	d.fc = lin("fc", h, len(c.TargetLayerIDs)*h)
	d.hiddenNorm = vec("hidden_norm", h)
	d.norm = vec("norm", h)
	d.layers = make([]decoderLayer, c.NumLayers)
	for i := range d.layers {
		p := fmt.Sprintf("layers.%d.", i)
		l := &d.layers[i]
		l.q = lin(p+"self_attn.q_proj", d.heads*hd, h)
		l.k = lin(p+"self_attn.k_proj", d.kvh*hd, h)
		l.v = lin(p+"self_attn.v_proj", d.kvh*hd, h)
		l.o = lin(p+"self_attn.o_proj", h, d.heads*hd)
		l.qNorm = vec(p+"self_attn.q_norm", hd)
		l.kNorm = vec(p+"self_attn.k_norm", hd)
		l.gate = lin(p+"mlp.gate_proj", c.IntermediateSize, h)
		l.up = lin(p+"mlp.up_proj", c.IntermediateSize, h)
		l.down = lin(p+"mlp.down_proj", h, c.IntermediateSize)
		l.inputNorm = vec(p+"input_layernorm", h)
		l.postNorm = vec(p+"post_attention_layernorm", h)
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Config is the draft's config.
func (d *DFlash) Config() *DFlashConfig { return d.cfg }

// TargetLayers lists the target layers the draft is conditioned on (do not modify).
func (d *DFlash) TargetLayers() []int { return d.cfg.TargetLayerIDs }

// NewCaches makes one context cache per draft layer.
func (d *DFlash) NewCaches() []Cache {
	cs := make([]Cache, len(d.layers))
	for i := range cs {
		cs[i] = &KVCache{}
	}
	return cs
}

// WeightBytes is the memory the draft's weights take in the compute dtype.
func (d *DFlash) WeightBytes() int64 { return d.weights.Bytes() }

// Close frees the weights.
func (d *DFlash) Close() { d.weights.Free() }

// Forward runs one draft block. block is the block's input embeddings [1, L, hidden] (the target's
// embedding of the anchor and L-1 mask tokens); ctx holds the target's tapped hidden states
// [1, S, len(TargetLayers())*hidden] of the S >= 1 context positions the caches do not hold yet,
// which start at the caches' offset; the block follows them. The caches keep context keys and
// values only, so after a call they hold S more positions and nothing of the block. It returns the
// block's hidden states after the draft's final norm, [1, L, hidden]: apply the target's Unembed
// for logits.
func (d *DFlash) Forward(block, ctx mlx.Array, caches []Cache) mlx.Array {
	c := mlx.RMSNorm(d.fc.Forward(ctx), d.hiddenNorm, d.eps)
	h := block
	for i := range d.layers {
		l := &d.layers[i]
		r := d.attention(l, mlx.RMSNorm(h, l.inputNorm, d.eps), c, caches[i])
		h = mlx.Add(h, r)
		n := mlx.RMSNorm(h, l.postNorm, d.eps)
		h = mlx.Add(h, l.down.Forward(mlx.SwiGLU(l.gate.Forward(n), l.up.Forward(n))))
	}
	return mlx.RMSNorm(h, d.norm, d.eps)
}

// attention is model_mlx.py's DFlashAttention for full_attention layers: queries from the block,
// keys and values from the cached context followed by the block, no mask.
func (d *DFlash) attention(l *decoderLayer, x, ctx mlx.Array, c Cache) mlx.Array {
	b, n, s := x.Dim(0), x.Dim(1), ctx.Dim(1)
	heads := func(a mlx.Array, seq, h int) mlx.Array { return mlx.Reshape(a, b, seq, h, -1) }
	t := func(a mlx.Array) mlx.Array { return mlx.Transpose(a, 0, 2, 1, 3) }
	off := c.Offset()
	q := t(mlx.RMSNorm(heads(l.q.Forward(x), n, d.heads), l.qNorm, d.eps))
	ck := t(mlx.RMSNorm(heads(l.k.Forward(ctx), s, d.kvh), l.kNorm, d.eps))
	cv := t(heads(l.v.Forward(ctx), s, d.kvh))
	bk := t(mlx.RMSNorm(heads(l.k.Forward(x), n, d.kvh), l.kNorm, d.eps))
	bv := t(heads(l.v.Forward(x), n, d.kvh))
	q = d.rope.apply(q, off+s)
	ck = d.rope.apply(ck, off)
	bk = d.rope.apply(bk, off+s)
	keys, values := c.Update(ck, cv)
	keys = mlx.Concat(2, keys, bk)
	values = mlx.Concat(2, values, bv)
	o := mlx.SDPA(q, keys, values, d.scale, mlx.MaskNone, mlx.Array{})
	return l.o.Forward(mlx.Reshape(t(o), b, n, -1))
}
