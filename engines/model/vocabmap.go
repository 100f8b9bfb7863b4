package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// VocabMapFile, beside a draft checkpoint's config.json, restricts the draft to a subset of its
// target's vocabulary (FR-Spec's idea): the draft's embedding and head hold only the rows listed,
// which keeps a small draft's head cheap. The loaded model still speaks the target's token ids:
// target ids outside the subset enter as the fallback row, and its logits come back over the
// target's whole vocabulary, -inf outside the subset (so greedy drafting never proposes such a
// token, and a sampled draft's distribution is exactly zero there). In a DFlash draft's directory
// the same file lists only the target ids its (borrowed) head projects onto: see ReadHeadVocab.
const VocabMapFile = "draft_vocab.json"

// VocabMap is the content of VocabMapFile.
type VocabMap struct {
	// TargetVocabSize is the vocabulary the model's ids are mapped onto.
	TargetVocabSize int `json:"target_vocab_size"`
	// IDs[i] is the target id of draft row i; -1 only at Fallback, for a row that only embeds.
	IDs []int `json:"ids"`
	// Fallback is the draft row a target id outside the subset is embedded as.
	Fallback int `json:"fallback"`
}

// ReadVocabMap reads dir's VocabMapFile and checks it against a draft vocabulary of rows ids. It
// returns nil and no error when dir has none.
func ReadVocabMap(dir string, rows int) (*VocabMap, error) {
	path, b, err := readVocabFile(dir)
	if b == nil || err != nil {
		return nil, err
	}
	var m VocabMap
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("model: %s: %v: %w", path, err, ErrCheckpoint)
	}
	if err := m.check(rows); err != nil {
		return nil, fmt.Errorf("model: %s: %v (rewrite it with engines/spec/train/train_ardraft.py, or remove it to load the draft over its own ids): %w", path, err, ErrCheckpoint)
	}
	return &m, nil
}

// readVocabFile returns the path and content of dir's VocabMapFile, or no content and no error
// when dir has none.
func readVocabFile(dir string) (string, []byte, error) {
	path := filepath.Join(dir, VocabMapFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return path, nil, nil
	}
	if err != nil {
		return path, nil, fmt.Errorf("model: %w", err)
	}
	if b == nil {
		b = []byte{} // an empty file is there, and malformed
	}
	return path, b, nil
}

func (m *VocabMap) check(rows int) error {
	if m.TargetVocabSize <= 0 {
		return fmt.Errorf("target_vocab_size %d: must be positive", m.TargetVocabSize)
	}
	if len(m.IDs) != rows {
		return fmt.Errorf("%d ids for a draft vocabulary of %d rows (config.json's vocab_size): want one per row", len(m.IDs), rows)
	}
	if m.Fallback < 0 || m.Fallback >= rows {
		return fmt.Errorf("fallback row %d is outside the draft's %d rows", m.Fallback, rows)
	}
	seen := make(map[int]int, rows)
	for i, id := range m.IDs {
		if id == -1 && i == m.Fallback {
			continue
		}
		if id < 0 || id >= m.TargetVocabSize {
			return fmt.Errorf("row %d maps to target id %d, outside the target's vocabulary of %d", i, id, m.TargetVocabSize)
		}
		if j, ok := seen[id]; ok {
			return fmt.Errorf("rows %d and %d both map to target id %d", j, i, id)
		}
		seen[id] = i
	}
	if len(seen) == 0 {
		return fmt.Errorf("no row maps to a target id")
	}
	return nil
}

// vocabMapped is a model over a subset of the target's vocabulary seen through its VocabMap.
type vocabMapped struct {
	Model
	cfg *Config
	// in [target vocab] is each target id's draft row; out [target vocab] is each target id's
	// column in the draft's logits followed by one -inf column (the draft's row count).
	in, out mlx.Array
	rows    int
}

// mapVocab wraps m (whose weights w owns) so that it reads and scores target ids through vm.
// Must run on the MLX thread.
func mapVocab(m Model, vm *VocabMap, w *Weights) (Model, error) {
	rows := len(vm.IDs)
	in := make([]int32, vm.TargetVocabSize)
	out := make([]int32, vm.TargetVocabSize)
	for t := range in {
		in[t], out[t] = int32(vm.Fallback), int32(rows)
	}
	for r, t := range vm.IDs {
		if t >= 0 {
			in[t], out[t] = int32(r), int32(r)
		}
	}
	c := *m.Config()
	c.VocabSize = vm.TargetVocabSize
	v := &vocabMapped{Model: m, cfg: &c, rows: rows}
	s := mlx.NewScope()
	v.in = mlx.FromInt32s(in, len(in))
	v.out = mlx.FromInt32s(out, len(out))
	s.Keep(v.in, v.out)
	if err := s.Close(); err != nil {
		return nil, fmt.Errorf("model: vocabulary map: %w", err)
	}
	w.owned = append(w.owned, v.in, v.out)
	if err := mlx.Eval(v.in, v.out); err != nil {
		return nil, fmt.Errorf("model: vocabulary map: %w", err)
	}
	return v, nil
}

// Config reports the target's vocabulary size: the ids this model reads and scores.
func (v *vocabMapped) Config() *Config { return v.cfg }

// Embed embeds target ids through their draft rows.
func (v *vocabMapped) Embed(ids mlx.Array) mlx.Array { return v.Model.Embed(mlx.Take(v.in, ids, 0)) }

// Head scores the target's whole vocabulary: the draft's logits where a row maps there, -inf
// elsewhere.
func (v *vocabMapped) Head(h mlx.Array) mlx.Array {
	logits := v.Model.Head(h)
	shape := logits.Shape()
	shape[len(shape)-1] = 1
	none := mlx.Full(math.Inf(-1), logits.DType(), shape...)
	return mlx.Take(mlx.Concat(-1, logits, none), v.out, -1)
}

// ReadHeadVocab reads the VocabMapFile of a DFlash draft directory, which lists the target ids
// its head projects onto: {"target_vocab_size": V, "ids": [...]}, with no fallback row (a DFlash
// draft embeds with the target's own embedding, so every target id enters as itself). It checks
// the file against the target's vocabulary of targetVocab ids and returns the ids, or nil and no
// error when dir has no such file.
func ReadHeadVocab(dir string, targetVocab int) ([]int, error) {
	path, b, err := readVocabFile(dir)
	if b == nil || err != nil {
		return nil, err
	}
	var raw map[string]json.RawMessage
	var m VocabMap
	if err = json.Unmarshal(b, &raw); err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err == nil {
		err = checkHeadVocab(raw, &m, targetVocab)
	}
	if err != nil {
		return nil, fmt.Errorf("model: %s: %v (a DFlash draft's head vocabulary; rewrite it with engines/spec/train/train_dflash.py, or remove it to project onto the target's whole vocabulary): %w", path, err, ErrCheckpoint)
	}
	return m.IDs, nil
}

func checkHeadVocab(raw map[string]json.RawMessage, m *VocabMap, targetVocab int) error {
	if _, ok := raw["fallback"]; ok {
		return fmt.Errorf("has a fallback row, which only a model drafter's map has: a DFlash draft embeds with the target's embedding")
	}
	if _, ok := raw["target_vocab_size"]; !ok {
		return fmt.Errorf("target_vocab_size is missing")
	}
	if m.TargetVocabSize != targetVocab {
		return fmt.Errorf("target_vocab_size %d, but the target's vocabulary has %d ids: the map was made for another target", m.TargetVocabSize, targetVocab)
	}
	if len(m.IDs) == 0 {
		return fmt.Errorf("ids is empty: the head would score no token")
	}
	seen := make(map[int]bool, len(m.IDs))
	for i, id := range m.IDs {
		if id < 0 || id >= targetVocab {
			return fmt.Errorf("ids[%d] = %d is outside the target's vocabulary of %d", i, id, targetVocab)
		}
		if seen[id] {
			return fmt.Errorf("target id %d is listed twice", id)
		}
		seen[id] = true
	}
	return nil
}
