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
		dt      mlx.DType
		ram     int64
		fits    bool
		mention []string
	}{
		{"bf16 4B on 16 GB", qwen3_4b, mlx.BFloat16, 16 << 30, true, nil},
		{"f32 4B on 16 GB", qwen3_4b, mlx.Float32, 16 << 30, false, []string{"--dtype bf16", "float32 doubles"}},
		{"bf16 4B on 8 GB", qwen3_4b, mlx.BFloat16, 8 << 30, false, []string{"needs", "usable of 8.00 GiB RAM", "--stages 2"}},
		{"4-bit 4B on 8 GB", &q4, mlx.BFloat16, 8 << 30, true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckMemory(tc.c, tc.dt, 4096, tc.ram)
			if tc.fits {
				if err != nil {
					t.Fatalf("CheckMemory = %v; want it to fit (estimate %+v)", err, EstimateMemory(tc.c, tc.dt, 4096))
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
