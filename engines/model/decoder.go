package model

import (
	"fmt"
	"math"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// decoder is the Llama family block: pre-norm attention with GQA and RoPE, then a SwiGLU MLP.
// Qwen3 adds RMS norms on queries and keys (qkNorm). The op order follows mlx-lm's llama.py and
// qwen3.py so that both engines produce bit-identical logits on the same checkpoint.
type decoder struct {
	cfg          *Config
	embed        *Embedding
	lmHead       *Linear // nil when tied
	norm         mlx.Array
	layers       []decoderLayer
	rope         *rope
	eps          float32
	heads, kvh   int
	headDim      int
	scale        float32
	qkNorm       bool
	hidden       int
	computeDType mlx.DType
}

type decoderLayer struct {
	q, k, v, o          *Linear
	qNorm, kNorm        mlx.Array
	inputNorm, postNorm mlx.Array
	gate, up, down      *Linear
}

var _ Model = (*decoder)(nil)

func init() {
	register("llama", func(c *Config, w *Weights) (Model, error) { return newDecoder(c, w, false) })
	register("qwen3", func(c *Config, w *Weights) (Model, error) { return newDecoder(c, w, true) })
}

func newDecoder(c *Config, w *Weights, qkNorm bool) (*decoder, error) {
	hd := c.KVHeadDim()
	d := &decoder{
		cfg: c, eps: float32(c.RMSNormEps), heads: c.NumHeads, kvh: c.NumKVHeads, headDim: hd,
		scale: float32(math.Pow(float64(hd), -0.5)), qkNorm: qkNorm, hidden: c.HiddenSize,
		computeDType: w.compute,
	}
	if c.RopeTheta == 0 {
		if c.ModelType == "qwen3" {
			return nil, fmt.Errorf("model: rope_theta is missing from config.json")
		}
		c.RopeTheta = 10000
	}
	var err error
	if d.rope, err = newRope(c, w, hd, c.RopeTheta); err != nil {
		return nil, err
	}
	if w.HasEmbed() {
		if d.embed, err = w.Embedding("model.embed_tokens", c.VocabSize, c.HiddenSize); err != nil {
			return nil, err
		}
	}
	if w.HasHead() {
		if !c.Tied() {
			if d.lmHead, err = w.Linear("lm_head", c.VocabSize, c.HiddenSize, false); err != nil {
				return nil, err
			}
		}
		if d.norm, err = w.Tensor("model.norm.weight", c.HiddenSize); err != nil {
			return nil, err
		}
	}
	d.layers = make([]decoderLayer, c.NumLayers)
	for i := range d.layers {
		if !w.HasLayer(i) {
			continue
		}
		if err := d.loadLayer(w, i); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *decoder) loadLayer(w *Weights, i int) error {
	c := d.cfg
	p := fmt.Sprintf("model.layers.%d.", i)
	l := &d.layers[i]
	var err error
	lin := func(name string, out, in int, bias bool) *Linear {
		if err != nil {
			return nil
		}
		var r *Linear
		r, err = w.Linear(p+name, out, in, bias)
		return r
	}
	vec := func(name string, n int) mlx.Array {
		if err != nil {
			return mlx.Array{}
		}
		var a mlx.Array
		a, err = w.Tensor(p+name, n)
		return a
	}
	l.q = lin("self_attn.q_proj", d.heads*d.headDim, d.hidden, c.AttentionBias)
	l.k = lin("self_attn.k_proj", d.kvh*d.headDim, d.hidden, c.AttentionBias)
	l.v = lin("self_attn.v_proj", d.kvh*d.headDim, d.hidden, c.AttentionBias)
	l.o = lin("self_attn.o_proj", d.hidden, d.heads*d.headDim, c.AttentionBias)
	if d.qkNorm {
		l.qNorm = vec("self_attn.q_norm.weight", d.headDim)
		l.kNorm = vec("self_attn.k_norm.weight", d.headDim)
	}
	l.gate = lin("mlp.gate_proj", c.IntermediateSize, d.hidden, c.MLPBias)
	l.up = lin("mlp.up_proj", c.IntermediateSize, d.hidden, c.MLPBias)
	l.down = lin("mlp.down_proj", d.hidden, c.IntermediateSize, c.MLPBias)
	l.inputNorm = vec("input_layernorm.weight", d.hidden)
	l.postNorm = vec("post_attention_layernorm.weight", d.hidden)
	return err
}

func (d *decoder) Config() *Config { return d.cfg }

func (d *decoder) NewCache(int) Cache { return &KVCache{} }

func (d *decoder) Embed(ids mlx.Array) mlx.Array { return d.embed.Forward(ids) }

func (d *decoder) Head(h mlx.Array) mlx.Array {
	h = mlx.RMSNorm(h, d.norm, d.eps)
	if d.lmHead != nil {
		return d.lmHead.Forward(h)
	}
	return d.embed.AsLinear(h)
}

func (d *decoder) Layer(i int, x mlx.Array, c Cache) mlx.Array {
	l := &d.layers[i]
	r := d.attention(l, mlx.RMSNorm(x, l.inputNorm, d.eps), c)
	h := mlx.Add(x, r)
	n := mlx.RMSNorm(h, l.postNorm, d.eps)
	g := l.gate.Forward(n)
	r = l.down.Forward(mlx.SwiGLU(g, l.up.Forward(n)))
	return mlx.Add(h, r)
}

func (d *decoder) attention(l *decoderLayer, x mlx.Array, c Cache) mlx.Array {
	s := x.Shape()
	b, n := s[0], s[1]
	q, k, v := d.project(l, x, b, n)
	off := c.Offset()
	q = d.rope.apply(q, off)
	k = d.rope.apply(k, off)
	k, v = c.Update(k, v)
	mode := mlx.MaskNone
	if n > 1 {
		mode = mlx.MaskCausal
	}
	o := mlx.SDPA(q, k, v, d.scale, mode, mlx.Array{})
	return l.o.Forward(mlx.Reshape(mlx.Transpose(o, 0, 2, 1, 3), b, n, -1))
}

// project computes the queries, keys and values of x [B, L, hidden] as [B, heads, L, head_dim],
// with Qwen3's q/k norms where the model has them. Every attention path (single sequence, rows,
// padded batch) shares it, so they cannot drift apart.
func (d *decoder) project(l *decoderLayer, x mlx.Array, b, n int) (q, k, v mlx.Array) {
	q = mlx.Reshape(l.q.Forward(x), b, n, d.heads, -1)
	k = mlx.Reshape(l.k.Forward(x), b, n, d.kvh, -1)
	v = mlx.Transpose(mlx.Reshape(l.v.Forward(x), b, n, d.kvh, -1), 0, 2, 1, 3)
	if d.qkNorm {
		q = mlx.RMSNorm(q, l.qNorm, d.eps)
		k = mlx.RMSNorm(k, l.kNorm, d.eps)
	}
	q = mlx.Transpose(q, 0, 2, 1, 3)
	k = mlx.Transpose(k, 0, 2, 1, 3)
	return q, k, v
}
