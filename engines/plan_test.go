package engines

import (
	"slices"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
)

func presetConfig(t *testing.T, o synth.Options) *model.Config {
	t.Helper()
	b, err := synth.ConfigJSON(o)
	if err != nil {
		t.Fatal(err)
	}
	c, err := model.ParseConfig(b, o.Preset)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLayerKVBytes(t *testing.T) {
	qwen := presetConfig(t, synth.Options{Preset: "qwen3-4b"})
	gemma := presetConfig(t, synth.Options{Preset: "gemma-3-12b", Bits: 4})
	const qwenPos = 2 * 8 * 128 * 2  // K and V, 8 KV heads of 128, bf16
	const gemmaPos = 2 * 8 * 256 * 2 // 8 KV heads of 256
	cases := []struct {
		name    string
		c       *model.Config
		layer   int
		context int
		want    int64
	}{
		{"full attention rounds up to 256 positions", qwen, 0, 1000, 1024 * qwenPos},
		{"gemma global layer grows with the context", gemma, 5, 32768, 32768 * gemmaPos},
		{"gemma local layer below its window", gemma, 0, 100, 100 * gemmaPos},
		{"gemma local layer: window-1 plus one prefill chunk", gemma, 0, 4096, (1023 + PrefillChunk) * gemmaPos},
		{"gemma local layer is bounded at long context", gemma, 4, 131072, (1023 + PrefillChunk) * gemmaPos},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := LayerKVBytes(tc.c, mlx.BFloat16, tc.context, tc.layer); got != tc.want {
				t.Errorf("LayerKVBytes(layer %d, context %d) = %d; want %d", tc.layer, tc.context, got, tc.want)
			}
		})
	}
}

// TestEstimateMemoryFullAttention pins the estimate of models without sliding windows to the
// closed form it had before Gemma 3: 2 x layers x KV width x context (rounded to 256) x element.
func TestEstimateMemoryFullAttention(t *testing.T) {
	for _, name := range []string{"qwen3-4b", "qwen3-8b", "llama-3.2-1b"} {
		c := presetConfig(t, synth.Options{Preset: name})
		for _, ctx := range []int{1, 4096, 5000} {
			want := int64(2*c.NumLayers*c.NumKVHeads*c.KVHeadDim()*4) * int64((ctx+255)/256*256)
			if got := EstimateMemory(c, mlx.Float32, ctx).KVCache; got != want {
				t.Errorf("%s: KV cache at %d tokens = %d; want %d", name, ctx, got, want)
			}
		}
	}
}

func TestBalanceBytes(t *testing.T) {
	none := func(int) int64 { return 0 }
	cases := []struct {
		name   string
		layer  []int64
		stages int
		extra  func(int) int64
		want   []model.Range
	}{
		{"equal layers", []int64{1, 1, 1, 1, 1, 1}, 2, none, []model.Range{{From: 0, To: 3}, {From: 3, To: 6}}},
		{"three stages", []int64{1, 1, 1, 1, 1, 1}, 3, none, []model.Range{{From: 0, To: 2}, {From: 2, To: 4}, {From: 4, To: 6}}},
		{"heavy first stage extra", []int64{1, 1, 1, 1, 1, 1}, 2, func(s int) int64 { return int64(2 * (1 - s)) }, []model.Range{{From: 0, To: 2}, {From: 2, To: 6}}},
		{"uneven layers", []int64{5, 1, 1, 1, 1, 1}, 2, none, []model.Range{{From: 0, To: 1}, {From: 1, To: 6}}},
		{"one layer each", []int64{3, 1, 2}, 3, none, []model.Range{{From: 0, To: 1}, {From: 1, To: 2}, {From: 2, To: 3}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := BalanceBytes(tc.layer, tc.stages, tc.extra); !slices.Equal(got, tc.want) {
				t.Errorf("BalanceBytes(%v, %d) = %v; want %v", tc.layer, tc.stages, got, tc.want)
			}
		})
	}
}

func TestPlanDeploymentsErrors(t *testing.T) {
	c := presetConfig(t, synth.Options{Preset: "tiny-gemma3"})
	cases := []struct {
		name string
		o    PlanOptions
	}{
		{"no target", PlanOptions{RAM: 1 << 30}},
		{"no RAM", PlanOptions{Target: c}},
		{"more stages than layers", PlanOptions{Target: c, RAM: 1 << 30, Stages: 7}},
		{"negative context", PlanOptions{Target: c, RAM: 1 << 30, Context: -1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := PlanDeployments(tc.o); err == nil {
				t.Errorf("PlanDeployments(%s) succeeded; want an error", tc.name)
			}
		})
	}
}
