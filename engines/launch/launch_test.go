package launch

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testmodel"
)

func TestCheck(t *testing.T) {
	cases := []struct {
		name string
		c    Config
		want string // "" accepts
	}{
		{"standalone", Config{}, ""},
		{"unknown mode", Config{Mode: "tensor"}, "use standalone, pipeline, spec, pipeline+spec"},
		{"spec lookup", Config{Mode: Spec, Drafter: "lookup"}, ""},
		{"spec without drafter", Config{Mode: Spec}, "unknown drafter"},
		{"spec model without draft", Config{Mode: Spec, Drafter: "model"}, "needs a draft checkpoint"},
		{"pipeline", Config{Mode: Pipeline, Link: "wifi"}, ""},
		{"pipeline bad link", Config{Mode: Pipeline, Link: "pigeon"}, "pigeon"},
		{"pipeline bad reply", Config{Mode: Pipeline, Reply: "topk:0"}, "topk:K"},
		{"pipeline bad transport", Config{Mode: Pipeline, Transport: "udp"}, "use tcp, mlx-ring or mlx-jaccl"},
		{"pipeline+spec dflash", Config{Mode: PipelineSpec, Drafter: "dflash", Draft: "d"}, ""},
		{"pipeline+spec dflash without draft", Config{Mode: PipelineSpec, Drafter: "dflash"}, "needs a draft checkpoint"},
		{"pipeline+spec ring", Config{Mode: PipelineSpec, Drafter: "lookup", Transport: "mlx-ring"}, "tcp only"},
		{"missing hosts file", Config{Mode: Pipeline, Hosts: filepath.Join(t.TempDir(), "none.yaml")}, "hosts"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.c)
			if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check(%+v) = %v; want %q", tc.c, err, tc.want)
			}
		})
	}
}

// TestLoaderReuses: standalone and spec share the loaded target, a changed drafter is replaced,
// and both modes generate the same greedy tokens (speculative == standalone through launch).
func TestLoaderReuses(t *testing.T) {
	dir := tinyQwen3(t)
	ctx := context.Background()
	var l Loader
	defer l.Close()
	gen := func(c Config) ([]int, Info) {
		t.Helper()
		g, err := l.Load(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		prompt := g.Tokenizer().Encode("one two three, one two three, one two", true)
		st, err := g.Generate(ctx, engines.Request{Tokens: prompt, MaxTokens: 12, IgnoreEOS: true}, func(engines.Token) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		if (c.Mode == Spec) != (st.Spec != nil) {
			t.Errorf("mode %s: Stats.Spec = %v", c.Mode, st.Spec)
		}
		return st.Tokens, g.Info()
	}
	want, info := gen(Config{Model: dir})
	if info.Mode != Standalone || info.WeightBytes == 0 || info.KVBytes(16) == 0 {
		t.Errorf("standalone info = %+v", info)
	}
	target := l.eng
	for _, c := range []Config{
		{Model: dir, Mode: Spec, Drafter: "lookup", DraftTokens: 3},
		{Model: dir, Mode: Spec, Drafter: "model", Draft: dir, DraftTokens: 2},
	} {
		got, info := gen(c)
		if !slices.Equal(got, want) {
			t.Errorf("%s with %s: tokens %v; standalone %v", c.Mode, c.Drafter, got, want)
		}
		if info.DraftTokens != c.DraftTokens {
			t.Errorf("%s with %s: K = %d; want %d", c.Mode, c.Drafter, info.DraftTokens, c.DraftTokens)
		}
		if l.eng != target {
			t.Errorf("%s with %s reloaded the target", c.Mode, c.Drafter)
		}
	}
	if _, ok := l.draft.(*engines.ModelDrafter); !ok {
		t.Errorf("drafter = %T; want the model drafter that replaced lookup", l.draft)
	}
}

// TestOpenBatched: a standalone configuration with MaxBatch opens a generator that serve can
// overlap (MaxBatch) and read occupancy from (Occupancy), through Open's wrapper too, and that
// generates what the plain engine generates.
func TestOpenBatched(t *testing.T) {
	dir := tinyQwen3(t)
	ctx := context.Background()
	run := func(c Config) (Generator, []int) {
		g, err := Open(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		st, err := g.Generate(ctx, engines.Request{Tokens: []int{1, 2, 3, 4}, MaxTokens: 10, IgnoreEOS: true}, func(engines.Token) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		return g, st.Tokens
	}
	plain, want := run(Config{Model: dir})
	plain.Close()
	g, got := run(Config{Model: dir, MaxBatch: 4})
	defer g.Close()
	b, ok := g.(interface {
		MaxBatch() int
		Occupancy() (int, int64, int64)
	})
	if !ok {
		t.Fatalf("Open with MaxBatch 4 gave %T, without MaxBatch and Occupancy", g)
	}
	if n := b.MaxBatch(); n != 4 {
		t.Errorf("MaxBatch() = %d; want 4", n)
	}
	if _, _, capacity := b.Occupancy(); capacity <= 0 {
		t.Errorf("Occupancy capacity %d; want > 0", capacity)
	}
	if !slices.Equal(got, want) {
		t.Errorf("batched tokens %v; want the plain engine's %v", got, want)
	}
}

// tinyQwen3 writes a tiny-qwen3 checkpoint (seed 3, its real tokenizer) and returns its directory.
func tinyQwen3(t *testing.T) string {
	t.Helper()
	return testmodel.Synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 3})
}

// TestLoadSpecMemory: with RAM for the target alone, spec with a draft model is refused before
// anything is loaded, since both models and their caches must fit at once; lookup drafting,
// which loads no second model, runs.
func TestLoadSpecMemory(t *testing.T) {
	dir := tinyQwen3(t)
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	const ctxLen = 64
	one := engines.EstimateMemory(cfg, mlx.Float32, ctxLen).Total()
	both := engines.SpecMemory(cfg, cfg, mlx.Float32, ctxLen).Total()
	ram := int64(float64(one+both) / 2 / engines.SafetyFactor) // room for one model, not two
	if err := engines.CheckMemory(cfg, mlx.Float32, ctxLen, ram); err != nil {
		t.Fatalf("with %d bytes of RAM the target alone should fit: %v", ram, err)
	}
	c := Config{Model: dir, DType: "f32", Context: ctxLen, RAM: ram, Mode: Spec, Drafter: "model", Draft: dir}
	var l Loader
	defer l.Close()
	_, err = l.Load(context.Background(), c)
	if !errors.Is(err, engines.ErrMemory) || !strings.Contains(err.Error(), "target and draft together") {
		t.Errorf("Load(spec, model drafter, RAM %d) = %v; want ErrMemory for target and draft together", ram, err)
	}
	if l.eng != nil || l.draft != nil {
		t.Errorf("Load refused spec after loading (engine %v, drafter %v); want nothing loaded", l.eng, l.draft)
	}
	c.Drafter, c.Draft = "lookup", ""
	if _, err := l.Load(context.Background(), c); err != nil {
		t.Errorf("Load(spec, lookup drafter, RAM %d) = %v; want it to run", ram, err)
	}
}

// blockDrafter is a drafter with a trained block, like a dflash draft.
type blockDrafter struct{ engines.LookupDrafter }

func (blockDrafter) BlockSize() int { return 8 }

func TestDraftTokens(t *testing.T) {
	tests := []struct {
		name    string
		k       int
		d       engines.Drafter
		want    int
		wantErr string
	}{
		{"configured", 3, &engines.LookupDrafter{}, 3, ""},
		{"default", 0, &engines.LookupDrafter{}, 4, ""},
		{"block default", 0, blockDrafter{}, 7, ""},
		{"within the block", 7, blockDrafter{}, 7, ""},
		{"beyond the block", 15, blockDrafter{}, 0, "use draft_tokens <= 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := draftTokens(tt.k, tt.d, "DIR")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("draftTokens(%d) error = %v; want one containing %q", tt.k, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("draftTokens(%d) = %d, %v; want %d", tt.k, got, err, tt.want)
			}
		})
	}
}

// TestGateDrafts: a draft confidence reaches a dflash drafter (0 included, to clear an earlier
// one) and is refused, with what to do, for the drafters that cannot cut their drafts.
func TestGateDrafts(t *testing.T) {
	if err := gateDrafts(engines.LookupDrafter{}, 0); err != nil {
		t.Errorf("lookup, confidence 0: %v", err)
	}
	if err := gateDrafts(engines.LookupDrafter{}, 0.3); err == nil || !strings.Contains(err.Error(), "only the dflash drafter") {
		t.Errorf("lookup, confidence 0.3: %v; want a refusal naming the dflash drafter", err)
	}
	d := &engines.DFlashDrafter{}
	if err := gateDrafts(d, 0.3); err != nil {
		t.Errorf("dflash, confidence 0.3: %v", err)
	}
	if err := gateDrafts(d, 1); err == nil {
		t.Error("dflash, confidence 1: no error")
	}
}
