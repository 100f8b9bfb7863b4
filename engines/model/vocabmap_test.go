package model_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

// writeVocabMap writes m as dir's draft_vocab.json.
func writeVocabMap(t *testing.T, dir string, m any) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, model.VocabMapFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// synthSixteenTokens writes a one-layer tiny-qwen3 with a 16-token vocabulary and returns the
// worker that wrote it (closed when the test ends) and its directory.
func synthSixteenTokens(t *testing.T) (*mlx.Worker, string) {
	t.Helper()
	w := mlx.NewWorker()
	t.Cleanup(w.Close)
	plain := t.TempDir()
	err := w.Do(context.Background(), func() error {
		_, err := synth.Write(synth.Options{Preset: "tiny-qwen3", Out: plain, Seed: 7, DType: "f32", Layers: 1,
			Set: []string{"vocab_size=16"}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return w, plain
}

// TestVocabMapped checks a draft with a restricted vocabulary against the same weights loaded
// without the map: a target id in the subset embeds as its row and scores as its row's logit, a
// target id outside it embeds as the fallback row and scores -inf.
func TestVocabMapped(t *testing.T) {
	const rows, target = 16, 100
	w, plain := synthSixteenTokens(t)
	mapped := t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors"} {
		if err := os.Symlink(filepath.Join(plain, f), filepath.Join(mapped, f)); err != nil {
			t.Fatal(err)
		}
	}
	// Row r is target id 5r+3, except the last row, which only embeds the ids left out.
	ids := make([]int, rows)
	for r := range ids {
		ids[r] = 5*r + 3
	}
	ids[rows-1] = -1
	writeVocabMap(t, mapped, model.VocabMap{TargetVocabSize: target, IDs: ids, Fallback: rows - 1})

	err := w.Do(context.Background(), func() error {
		p, err := model.Load(plain, mlx.Float32)
		if err != nil {
			return err
		}
		defer p.Close()
		m, err := model.Load(mapped, mlx.Float32)
		if err != nil {
			return err
		}
		defer m.Close()
		if got := m.Config().VocabSize; got != target {
			t.Errorf("mapped VocabSize = %d; want the target's %d", got, target)
		}
		if got := p.Config().VocabSize; got != rows {
			t.Errorf("plain VocabSize = %d; want %d (the map must not change the plain model)", got, rows)
		}
		s := mlx.NewScope()
		defer s.Close()
		// Target ids: two in the subset, one outside it.
		tids := []int32{8, 3, 50}
		rowsOf := []int32{1, 0, rows - 1}
		fwd := func(l *model.Loaded, in []int32) ([]float32, error) {
			h := l.Embed(mlx.FromInt32s(in, 1, len(in)))
			h = l.Layer(0, h, l.NewCache(0))
			out := l.Head(h)
			if err := mlx.Eval(out); err != nil {
				return nil, err
			}
			return out.Float32s()
		}
		got, err := fwd(m, tids)
		if err != nil {
			return err
		}
		want, err := fwd(p, rowsOf)
		if err != nil {
			return err
		}
		if len(got) != len(tids)*target || len(want) != len(tids)*rows {
			t.Fatalf("logits: %d and %d values; want %d and %d", len(got), len(want), len(tids)*target, len(tids)*rows)
		}
		for pos := range tids {
			for tid := range target {
				g := got[pos*target+tid]
				if r := (tid - 3) / 5; (tid-3)%5 == 0 && tid >= 3 && r < rows-1 {
					if w := want[pos*rows+r]; g != w {
						t.Errorf("position %d, target id %d: logit %v; want row %d's %v", pos, tid, g, r, w)
					}
				} else if !math.IsInf(float64(g), -1) {
					t.Errorf("position %d, target id %d (outside the subset): logit %v; want -inf", pos, tid, g)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestVocabMapRefused checks that a bad draft_vocab.json is refused with the fault named.
func TestVocabMapRefused(t *testing.T) {
	const rows = 16
	ok := make([]int, rows)
	for r := range ok {
		ok[r] = r * 2
	}
	with := func(f func([]int) []int) []int { return f(append([]int(nil), ok...)) }
	tests := []struct {
		name string
		m    any
		want string
	}{
		{"not json", "{", "unexpected end of JSON input"},
		{"short", model.VocabMap{TargetVocabSize: 100, IDs: ok[:rows-1]}, "15 ids for a draft vocabulary of 16 rows"},
		{"id out of range", model.VocabMap{TargetVocabSize: 100, IDs: with(func(a []int) []int { a[3] = 100; return a })},
			"row 3 maps to target id 100, outside the target's vocabulary of 100"},
		{"negative id", model.VocabMap{TargetVocabSize: 100, IDs: with(func(a []int) []int { a[4] = -1; return a })},
			"row 4 maps to target id -1"},
		{"duplicate", model.VocabMap{TargetVocabSize: 100, IDs: with(func(a []int) []int { a[5] = a[2]; return a })},
			"rows 2 and 5 both map to target id 4"},
		{"fallback out of range", model.VocabMap{TargetVocabSize: 100, IDs: ok, Fallback: rows}, "fallback row 16 is outside"},
		{"no target size", model.VocabMap{IDs: ok}, "target_vocab_size 0"},
	}
	w, plain := synthSixteenTokens(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range []string{"config.json", "model.safetensors"} {
				if err := os.Symlink(filepath.Join(plain, f), filepath.Join(dir, f)); err != nil {
					t.Fatal(err)
				}
			}
			if s, isText := tc.m.(string); isText {
				if err := os.WriteFile(filepath.Join(dir, model.VocabMapFile), []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				writeVocabMap(t, dir, tc.m)
			}
			err := w.Do(context.Background(), func() error {
				m, err := model.Load(dir, mlx.Float32)
				if err == nil {
					m.Close()
				}
				return err
			})
			if err == nil || !errors.Is(err, model.ErrCheckpoint) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load = %v; want an ErrCheckpoint saying %q", err, tc.want)
			}
		})
	}
}
