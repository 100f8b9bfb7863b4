package engines

import (
	"errors"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

func TestCheckMemory(t *testing.T) {
	qwen3_4b := &model.Config{ModelType: "qwen3", HiddenSize: 2560, NumLayers: 36, NumHeads: 32, NumKVHeads: 8,
		HeadDim: 128, IntermediateSize: 9728, VocabSize: 151936}
	tied := true
	qwen3_4b.TieWordEmbeddings = &tied
	q4 := *qwen3_4b
	q4.Quantization = &model.Quantization{GroupSize: 64, Bits: 4}
	cases := []struct {
		name    string
		c       *model.Config
		draft   *model.Config // speculative decoding: c and draft in one process
		dt      mlx.DType
		ram     int64
		fits    bool
		mention []string
	}{
		{"bf16 4B on 16 GB", qwen3_4b, nil, mlx.BFloat16, 16 << 30, true, nil},
		{"f32 4B on 16 GB", qwen3_4b, nil, mlx.Float32, 16 << 30, false, []string{"--dtype bf16", "float32 doubles"}},
		{"bf16 4B on 8 GB", qwen3_4b, nil, mlx.BFloat16, 8 << 30, false, []string{"needs", "usable of 8.00 GiB RAM", "--stages 2"}},
		{"4-bit 4B on 8 GB", &q4, nil, mlx.BFloat16, 8 << 30, true, nil},
		// Each 4B fits 16 GB alone (above); target and draft together do not.
		{"bf16 4B with a bf16 4B draft on 16 GB", qwen3_4b, qwen3_4b, mlx.BFloat16, 16 << 30, false, []string{"target and draft together", "--drafter lookup"}},
		{"bf16 4B with a 4-bit 4B draft on 16 GB", qwen3_4b, &q4, mlx.BFloat16, 16 << 30, true, nil},
		{"bf16 4B with a bf16 4B draft on 24 GB", qwen3_4b, qwen3_4b, mlx.BFloat16, 24 << 30, true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err, est := CheckMemory(tc.c, tc.dt, 4096, tc.ram), EstimateMemory(tc.c, tc.dt, 4096)
			if tc.draft != nil {
				err, est = CheckSpecMemory(tc.c, tc.draft, tc.dt, 4096, tc.ram), SpecMemory(tc.c, tc.draft, tc.dt, 4096)
			}
			if tc.fits {
				if err != nil {
					t.Fatalf("CheckMemory = %v; want it to fit (estimate %+v)", err, est)
				}
				return
			}
			if !errors.Is(err, ErrMemory) {
				t.Fatalf("CheckMemory = %v; want ErrMemory", err)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
	// Speculation holds both models' weights and caches, and one set of activations at a time.
	one, two := EstimateMemory(qwen3_4b, mlx.BFloat16, 4096), SpecMemory(qwen3_4b, qwen3_4b, mlx.BFloat16, 4096)
	if want := (Estimate{Weights: 2 * one.Weights, KVCache: 2 * one.KVCache, Overhead: one.Overhead}); two != want {
		t.Errorf("SpecMemory(4B, 4B) = %+v; want %+v", two, want)
	}
	// The estimate counts what the weights really are: 4B parameters in bf16 are about 8 GB.
	w := EstimateMemory(qwen3_4b, mlx.BFloat16, 0).Weights
	if w < 7.5e9 || w > 8.5e9 {
		t.Errorf("Qwen3-4B bf16 weights estimated at %d bytes; want about 8.0e9", w)
	}
}

func TestParseBytes(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		bad  bool
	}{
		{"16GB", 16e9, false}, {"16G", 16 << 30, false}, {"512MiB", 512 << 20, false}, {"1024", 1024, false},
		{"", 0, true}, {"-3GB", 0, true}, {"lots", 0, true},
	}
	for _, tc := range cases {
		got, err := ParseBytes(tc.in)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d (error %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
