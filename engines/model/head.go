package model

import (
	"fmt"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// Head is a target's untied lm_head loaded on its own, for a drafter that shares the head on a
// machine whose pipeline stage does not hold it (a DFlash draft beside stage 0). It implements
// Unembedder; Close frees it.
type Head struct {
	lin   *Linear
	w     *Weights
	vocab int
}

var _ Unembedder = (*Head)(nil)

// LoadHead loads lm_head from the checkpoint in dir in the compute dtype (dense or quantized as
// stored). A model whose head is tied to its embedding has none: its Embedding already is the
// head. Must run on the MLX thread.
func LoadHead(dir string, compute mlx.DType) (*Head, error) {
	c, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if c.Tied() {
		return nil, fmt.Errorf("model: %s ties its lm_head to the embedding: use the embedding as the head", dir)
	}
	w, err := openWeights(dir, c, compute)
	if err != nil {
		return nil, err
	}
	lin, err := w.Linear("lm_head", c.VocabSize, c.HiddenSize, false)
	if err != nil {
		w.Free()
		return nil, err
	}
	return &Head{lin: lin, w: w, vocab: c.VocabSize}, nil
}

// Unembed implements Unembedder.
func (h *Head) Unembed(x mlx.Array) mlx.Array { return h.lin.Forward(x) }

// Bytes is the memory the head takes.
func (h *Head) Bytes() int64 { return h.w.Bytes() }

// Close frees the head.
func (h *Head) Close() { h.w.Free() }
