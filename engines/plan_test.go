package engines

import (
	"slices"
	"strings"
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

func TestBalanceWeighted(t *testing.T) {
	none := func(int) int64 { return 0 }
	ones := func(n int) []int64 {
		l := make([]int64, n)
		for i := range l {
			l[i] = 1
		}
		return l
	}
	cases := []struct {
		name     string
		layer    []int64
		capacity []int64
		extra    func(int) int64
		want     []model.Range
	}{
		{"proportional 1:2:3", ones(36), []int64{1, 2, 3}, none, []model.Range{{From: 0, To: 6}, {From: 6, To: 18}, {From: 18, To: 36}}},
		{"proportional 3:1", ones(8), []int64{3 << 30, 1 << 30}, none, []model.Range{{From: 0, To: 6}, {From: 6, To: 8}}},
		{"equal capacity is BalanceBytes", ones(6), []int64{7, 7}, none, []model.Range{{From: 0, To: 3}, {From: 3, To: 6}}},
		{"extra counts against capacity", ones(6), []int64{1, 1}, func(s int) int64 { return int64(2 * s) }, []model.Range{{From: 0, To: 4}, {From: 4, To: 6}}},
		{"at least one layer each", ones(3), []int64{100, 1, 1}, none, []model.Range{{From: 0, To: 1}, {From: 1, To: 2}, {From: 2, To: 3}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := BalanceWeighted(tc.layer, tc.capacity, tc.extra); !slices.Equal(got, tc.want) {
				t.Errorf("BalanceWeighted(%v, %v) = %v; want %v", tc.layer, tc.capacity, got, tc.want)
			}
		})
	}
}

func TestSplitByMemory(t *testing.T) {
	c := presetConfig(t, synth.Options{Preset: "deep-narrow"})
	const context = 256
	e := EstimateMemory(c, mlx.Float32, context)
	over := e.Overhead
	layerBytes := (e.Weights + e.KVCache) / int64(c.NumLayers) // about one layer and its share of the rest
	t.Run("weighted by free memory", func(t *testing.T) {
		free := []int64{over + 8*layerBytes, over + 16*layerBytes, over + 32*layerBytes}
		rs, err := SplitByMemory(c, mlx.Float32, context, free)
		if err != nil {
			t.Fatal(err)
		}
		if rs[0].From != 0 || rs[2].To != c.NumLayers || rs[0].To != rs[1].From || rs[1].To != rs[2].From {
			t.Fatalf("split %v does not tile [0,%d)", rs, c.NumLayers)
		}
		n := []int{rs[0].To - rs[0].From, rs[1].To - rs[1].From, rs[2].To - rs[2].From}
		if !(n[0] < n[1] && n[1] < n[2]) {
			t.Errorf("layers per stage %v for free memory %v; want more layers where more memory is free", n, free)
		}
		for s, r := range rs {
			if got := StageMemory(c, mlx.Float32, r, context).Total(); got > free[s] {
				t.Errorf("stage %d needs %d for %v, offers %d", s, got, r, free[s])
			}
		}
	})
	for _, tc := range []struct {
		name string
		free []int64
		want string
	}{
		{"zero memory", []int64{over + 40*layerBytes, 0}, "stage 1 offers 0.0 KiB"},
		{"less than one layer", []int64{over + 40*layerBytes, over + layerBytes/4}, "stage 1 offers"},
		{"too little in all", []int64{over + 12*layerBytes, over + 12*layerBytes}, "the stages offer"},
		{"one stage", []int64{1 << 40}, "1 pipeline stages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := SplitByMemory(c, mlx.Float32, context, tc.free)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("SplitByMemory(%v) = %v; want an error containing %q", tc.free, err, tc.want)
			}
		})
	}
}

func TestParseVMStat(t *testing.T) {
	out := "Mach Virtual Memory Statistics: (page size of 16384 bytes)\nPages free:                               1000.\nPages active:                             5000.\nPages inactive:                           2000.\nPages speculative:                         500.\n"
	got, err := parseVMStat(out)
	if want := int64(3500 * 16384); err != nil || got != want {
		t.Errorf("parseVMStat = %d, %v; want %d", got, err, want)
	}
	if _, err := parseVMStat("garbage"); err == nil {
		t.Error("parseVMStat(garbage) = nil error; want one")
	}
}
