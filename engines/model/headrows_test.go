package model_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

// TestHeadRows checks a head cut down to some of its rows against the full head: for hidden
// states x, the rows' logits equal the full logits at those token ids, whatever the head is
// (an untied lm_head, a tied embedding, the lm_head loaded on its own for a first stage, a tied
// first stage's embedding), its precision (dense, 4-bit) and the weight layout (stored, or
// transposed as on a CPU); and the subset spreads values back over the whole vocabulary with
// exact fills outside it.
func TestHeadRows(t *testing.T) {
	const vocab = 384
	w := mlx.NewWorker()
	defer w.Close()
	write := func(bits int, set ...string) string {
		dir := t.TempDir()
		if err := w.Do(context.Background(), func() error {
			_, err := synth.Write(synth.Options{Preset: "tiny-qwen3", Out: dir, Seed: 5, DType: "f32", Layers: 2, Bits: bits,
				Set: append(set, fmt.Sprintf("vocab_size=%d", vocab))})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	untied, tied := write(0), write(0, "tie_word_embeddings=true")
	untiedQ, tiedQ := write(4), write(4, "tie_word_embeddings=true")
	rng := rand.New(rand.NewPCG(3, 4))
	ids := rng.Perm(vocab)[:97] // unsorted on purpose
	tests := []struct {
		name string
		dir  string
		// ownHead loads lm_head alone (model.LoadHead) beside a first stage of layers [0, 1).
		stage, ownHead bool
	}{
		{"untied", untied, false, false},
		{"tied", tied, false, false},
		{"untied first stage", untied, true, true},
		{"tied first stage", tied, true, false},
		{"untied 4-bit", untiedQ, false, false},
		{"tied 4-bit", tiedQ, false, false},
		{"untied 4-bit first stage", untiedQ, true, true},
	}
	for _, tt := range tests {
		for _, layout := range []string{"stored", "transposed"} {
			t.Run(tt.name+"/"+layout, func(t *testing.T) {
				t.Setenv(model.LayoutEnv, layout)
				err := w.Do(context.Background(), func() error {
					r := model.Range{}
					if tt.stage {
						r = model.Range{From: 0, To: 1}
					}
					m, err := model.LoadRange(tt.dir, mlx.Float32, r)
					if err != nil {
						return err
					}
					defer m.Close()
					var head model.Unembedder
					if tt.ownHead {
						h, err := model.LoadHead(tt.dir, mlx.Float32)
						if err != nil {
							return err
						}
						defer h.Close()
						head = h
					} else {
						var ok bool
						if head, ok = m.Model.(model.Unembedder); !ok {
							return fmt.Errorf("%T is not an Unembedder", m.Model)
						}
					}
					rows, err := head.(model.RowSelector).HeadRows(ids)
					if err != nil {
						return err
					}
					defer rows.Close()
					s := mlx.NewScope()
					defer s.Close()
					hidden := m.Config().HiddenSize
					xs := make([]float32, 3*hidden)
					for i := range xs {
						xs[i] = float32(rng.NormFloat64())
					}
					x := mlx.FromFloat32s(xs, 1, 3, hidden)
					full, part := head.Unembed(x), rows.Unembed(x)
					spread := rows.Subset().Expand(part, -1e30)
					picked := rows.Subset().ToVocab(mlx.FromInt32s([]int32{0, 5, 96}, 3))
					if err := mlx.Eval(full, part, spread, picked); err != nil {
						return err
					}
					if got, want := part.Shape(), []int{1, 3, len(ids)}; !slices.Equal(got, want) {
						return fmt.Errorf("rows' logits of shape %v; want %v", got, want)
					}
					f, err := full.Float32s()
					if err != nil {
						return err
					}
					p, err := part.Float32s()
					if err != nil {
						return err
					}
					sp, err := spread.Float32s()
					if err != nil {
						return err
					}
					for pos := range 3 {
						for c, id := range ids {
							got, want := p[pos*len(ids)+c], f[pos*vocab+id]
							if d := got - want; d > 1e-4 || d < -1e-4 {
								t.Errorf("position %d, token %d: rows' logit %g; want the full head's %g", pos, id, got, want)
							}
							if got := sp[pos*vocab+id]; got != p[pos*len(ids)+c] {
								t.Errorf("position %d, token %d: expanded %g; want the rows' %g", pos, id, got, p[pos*len(ids)+c])
							}
						}
						for id := range vocab {
							if !slices.Contains(ids, id) && sp[pos*vocab+id] != -1e30 {
								t.Errorf("position %d, token %d outside the subset: expanded %g; want the fill -1e30", pos, id, sp[pos*vocab+id])
							}
						}
					}
					got, err := picked.Int32s()
					if err != nil {
						return err
					}
					if want := []int32{int32(ids[0]), int32(ids[5]), int32(ids[96])}; !slices.Equal(got, want) {
						t.Errorf("ToVocab of columns [0 5 96] = %v; want %v", got, want)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestReadHeadVocab checks a DFlash draft's head vocabulary file: none is no map, a good one
// gives its ids, and bad ones are refused with an error that names the file and what to do.
func TestReadHeadVocab(t *testing.T) {
	const vocab = 50
	dir := t.TempDir()
	if ids, err := model.ReadHeadVocab(dir, vocab); ids != nil || err != nil {
		t.Fatalf("no file: ids %v, error %v; want none and no error", ids, err)
	}
	tests := []struct {
		name, content string
		want          string // part of the error; "" for a good file
	}{
		{"good", `{"target_vocab_size": 50, "ids": [0, 7, 3, 49]}`, ""},
		{"invalid JSON", `{"target_vocab_size": 50, "ids": [0, 7`, "unexpected end"},
		{"ids not numbers", `{"target_vocab_size": 50, "ids": ["a"]}`, "cannot unmarshal"},
		{"missing size", `{"ids": [1, 2]}`, "target_vocab_size is missing"},
		{"another target", `{"target_vocab_size": 49152, "ids": [1, 2]}`, "made for another target"},
		{"empty", `{"target_vocab_size": 50, "ids": []}`, "ids is empty"},
		{"no ids", `{"target_vocab_size": 50}`, "ids is empty"},
		{"out of range", `{"target_vocab_size": 50, "ids": [1, 50]}`, "ids[1] = 50 is outside"},
		{"negative", `{"target_vocab_size": 50, "ids": [-1, 2]}`, "ids[0] = -1 is outside"},
		{"duplicate", `{"target_vocab_size": 50, "ids": [4, 2, 4]}`, "target id 4 is listed twice"},
		{"model drafter's map", `{"target_vocab_size": 50, "ids": [4, -1], "fallback": 1}`, "fallback row"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, model.VocabMapFile), []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			ids, err := model.ReadHeadVocab(dir, vocab)
			if tt.want == "" {
				if err != nil || !slices.Equal(ids, []int{0, 7, 3, 49}) {
					t.Errorf("ids %v, error %v; want [0 7 3 49] and no error", ids, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ids %v and no error; want an error containing %q", ids, tt.want)
			}
			msg := err.Error()
			for _, part := range []string{tt.want, filepath.Join(dir, model.VocabMapFile), "remove it"} {
				if !strings.Contains(msg, part) {
					t.Errorf("error %q does not contain %q", msg, part)
				}
			}
			if !errors.Is(err, model.ErrCheckpoint) {
				t.Errorf("error %q is not model.ErrCheckpoint", msg)
			}
		})
	}
}
