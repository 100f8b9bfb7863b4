package model_test

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

// TestWeightLayoutsAgree loads the same checkpoints with dense weights as stored and transposed
// and checks that a prompt pass and a decode step give the same outputs: whole models with an
// untied and a tied head (the tied embedding then serves lookups from its transposed copy), and
// the two stages of a tied model, where only the last stage transposes its embedding.
func TestWeightLayoutsAgree(t *testing.T) {
	w := mlx.NewWorker()
	defer w.Close()
	write := func(preset string, set ...string) string {
		dir := t.TempDir()
		if err := w.Do(context.Background(), func() error {
			_, err := synth.Write(synth.Options{Preset: preset, Out: dir, Seed: 3, DType: "f32", Layers: 2, Set: set})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	untied := write("tiny-qwen3")
	tied := write("tiny-qwen3", "tie_word_embeddings=true")
	gemma := write("tiny-gemma3")
	tests := []struct {
		name  string
		dir   string
		r     model.Range
		input string // "ids" or "hidden"
	}{
		{"untied qwen3", untied, model.Range{From: 0, To: 2}, "ids"},
		{"tied qwen3", tied, model.Range{From: 0, To: 2}, "ids"},
		{"tied qwen3 first stage", tied, model.Range{From: 0, To: 1}, "ids"},
		{"tied qwen3 last stage", tied, model.Range{From: 1, To: 2}, "hidden"},
		{"tied gemma3", gemma, model.Range{From: 0, To: 2}, "ids"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := func(layout string) [][]float32 {
				t.Setenv(model.LayoutEnv, layout)
				var outs [][]float32
				err := w.Do(context.Background(), func() error {
					m, err := model.LoadRange(tt.dir, mlx.Float32, tt.r)
					if err != nil {
						return err
					}
					defer m.Close()
					s := mlx.NewScope()
					defer s.Close()
					caches := model.NewCaches(m)
					hidden := m.Config().HiddenSize
					// A prompt of five positions, then one decode step.
					for _, n := range []int{5, 1} {
						var x mlx.Array
						if tt.input == "ids" {
							ids := make([]int32, n)
							for i := range ids {
								ids[i] = int32(7*i + 11*n)
							}
							x = mlx.FromInt32s(ids, 1, n)
						} else {
							v := make([]float32, n*hidden)
							for i := range v {
								v[i] = float32(math.Sin(float64(i*n + 1)))
							}
							x = mlx.FromFloat32s(v, 1, n, hidden)
						}
						y := model.Forward(m, x, caches, tt.r)
						if err := mlx.Eval(y); err != nil {
							return err
						}
						f, err := y.Float32s()
						if err != nil {
							return err
						}
						outs = append(outs, f)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				return outs
			}
			stored, transposed := run("stored"), run("transposed")
			for step := range stored {
				if len(stored[step]) != len(transposed[step]) {
					t.Fatalf("step %d: %d values transposed, %d stored", step, len(transposed[step]), len(stored[step]))
				}
				worst, exact := 0.0, true
				for i, s := range stored[step] {
					d := math.Abs(float64(transposed[step][i] - s))
					exact = exact && d == 0
					worst = max(worst, d/(1+math.Abs(float64(s))))
				}
				if worst > 1e-5 {
					t.Errorf("step %d: transposed differs from stored by up to %.3g (relative); want the same outputs", step, worst)
				}
				if !exact {
					t.Logf("step %d: not bit for bit equal (worst relative difference %.3g)", step, worst)
				}
			}
		})
	}
}

// TestResolveLayout checks the layout names and what auto means on each kind of device.
func TestResolveLayout(t *testing.T) {
	tests := []struct {
		v       string
		gpu     bool
		want    string
		wantErr string
	}{
		{"", false, "transposed", ""},
		{"auto", false, "transposed", ""},
		{"auto", true, "stored", ""},
		{"stored", false, "stored", ""},
		{"transposed", true, "transposed", ""},
		{"column-major", false, "", "use auto, stored or transposed"},
	}
	for _, tt := range tests {
		t.Run(tt.v, func(t *testing.T) {
			got, err := model.ResolveLayout(tt.v, tt.gpu)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ResolveLayout(%q) error = %v; want one containing %q", tt.v, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ResolveLayout(%q, gpu=%v) = %q, %v; want %q", tt.v, tt.gpu, got, err, tt.want)
			}
		})
	}
}
