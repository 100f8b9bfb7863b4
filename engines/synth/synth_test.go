package synth

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

func TestWriteLoadsAndRuns(t *testing.T) {
	w := mlx.NewWorker()
	defer w.Close()
	cases := []struct {
		name string
		o    Options
	}{
		{"qwen3 bf16", Options{Preset: "tiny-qwen3"}},
		{"llama f32", Options{Preset: "tiny-llama", DType: "f32"}},
		{"qwen3 4-bit", Options{Preset: "tiny-qwen3", Bits: 4}},
		{"llama 8-bit sharded", Options{Preset: "tiny-llama", Bits: 8, ShardBytes: 1 << 20}},
		{"gemma3 bf16", Options{Preset: "tiny-gemma3"}},
		{"gemma3 multimodal layout 4-bit", Options{Preset: "tiny-gemma3-mm", Bits: 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Out = t.TempDir()
			tc.o.Seed = 7
			err := w.Do(context.Background(), func() error {
				if _, err := Write(tc.o); err != nil {
					return err
				}
				m, err := model.Load(tc.o.Out, mlx.Float32)
				if err != nil {
					return err
				}
				defer m.Close()
				s := mlx.NewScope()
				defer s.Close()
				caches := model.NewCaches(m)
				defer func() {
					for _, c := range caches {
						c.Free()
					}
				}()
				logits := model.Forward(m, mlx.FromInt32s([]int32{1, 2, 3}, 1, 3), caches, model.Range{From: 0, To: m.Config().NumLayers})
				if err := mlx.Eval(logits); err != nil {
					return err
				}
				if got, want := logits.Shape(), []int{1, 3, m.Config().VocabSize}; !slices.Equal(got, want) {
					t.Errorf("logits shape = %v; want %v", got, want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if tc.o.ShardBytes > 0 {
				if _, err := os.Stat(filepath.Join(tc.o.Out, "model.safetensors.index.json")); err != nil {
					t.Errorf("sharded checkpoint has no index: %v", err)
				}
			}
		})
	}
}
