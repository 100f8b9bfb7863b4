package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
	"github.com/hippo-bench/hippo/internal/testmodel"
	"github.com/hippo-bench/hippo/transport"
)

func synthesize(t *testing.T, preset string, bits int) string {
	t.Helper()
	return testmodel.Synthesize(t, synth.Options{Preset: preset, Seed: 5, Bits: bits})
}

const pipelinePrompt = "Pipeline parallelism splits the layers; the hidden state crosses the link."

// TestPipelineMatchesStandalone is invariant 2: any split, any link, token for token.
func TestPipelineMatchesStandalone(t *testing.T) {
	exe := testenv.Hippo(t)
	cases := []struct {
		name, preset string
		c            Config
	}{
		{"qwen3 2 stages", "tiny-qwen3", Config{Stages: 2}},
		{"qwen3 3 stages", "tiny-qwen3", Config{Stages: 3}},
		{"qwen3 uneven split", "tiny-qwen3", Config{Split: "0:1,1:4"}},
		{"qwen3 top-k replies", "tiny-qwen3", Config{Stages: 2, Reply: "topk:8"}},
		{"qwen3 bf16 over thunderbolt", "tiny-qwen3", Config{Stages: 2, Link: "thunderbolt", Dtype: "bf16"}},
		{"llama 2 stages", "tiny-llama", Config{Stages: 2}},
		{"llama uneven 3 stages", "tiny-llama", Config{Split: "0:2,2:3,3:4"}},
	}
	dirs := map[string]string{}
	for _, tc := range cases {
		if dirs[tc.preset] == "" {
			dirs[tc.preset] = synthesize(t, tc.preset, 0)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := dirs[tc.preset]
			c := tc.c
			c.Model, c.Prompt, c.MaxTokens, c.IgnoreEOS = dir, pipelinePrompt, 32, true
			e, err := engines.Open(context.Background(), engines.Options{Model: dir, DType: c.Dtype})
			if err != nil {
				t.Fatal(err)
			}
			want, err := Standalone(context.Background(), e, c, nil)
			e.Close()
			if err != nil {
				t.Fatal(err)
			}
			p := Pipelines{Exe: exe}
			defer p.Close()
			got, err := p.Run(context.Background(), dir, c, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Tokens, want.Tokens) {
				t.Fatalf("pipeline tokens = %v; standalone %v", got.Tokens, want.Tokens)
			}
			stages := max(c.Stages, strings.Count(c.Split, ",")+1)
			for i, s := range got.Steps {
				if len(s.StageForwardMS) != stages || s.Bytes == 0 {
					t.Fatalf("step %d = %+v; want %d stage timings and a byte count", i, s, stages)
				}
			}
		})
	}
}

// TestPipelineStageKilled: a stage that dies mid-generation makes the driver fail within 5 s with
// an error that names the stage, never a hang.
func TestPipelineStageKilled(t *testing.T) {
	err := killStageMidRun(t, "")
	if !strings.Contains(err.Error(), "stage") {
		t.Errorf("error %q does not name the stage", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q is a context deadline, not the dead peer", err)
	}
	t.Logf("error after kill: %v", err)
}

// killStageMidRun runs tiny-qwen3 over 3 local stages joined by transport ("" is tcp), kills
// stage 2 once five pieces of text have arrived, and returns the run's error, failing the test
// when there is none or when the driver took more than 5 s after the kill to return it.
func killStageMidRun(t *testing.T, transport string) error {
	t.Helper()
	exe := testenv.Hippo(t)
	dir := synthesize(t, "tiny-qwen3", 0)
	p := Pipelines{Exe: exe}
	defer p.Close()
	c := Config{Model: dir, Prompt: pipelinePrompt, MaxTokens: 10000, IgnoreEOS: true, Stages: 3, Transport: transport}
	var once sync.Once
	var killed time.Time
	n := 0
	_, err := p.Run(context.Background(), dir, c, func(string) {
		n++
		if n == 5 {
			once.Do(func() {
				killed = time.Now()
				p.Local().Process(2).Kill()
			})
		}
	})
	if err == nil {
		t.Fatal("Run succeeded after stage 2 was killed; want an error")
	}
	if d := time.Since(killed); d > 5*time.Second {
		t.Errorf("driver noticed the dead stage after %v; want < 5s", d)
	}
	return err
}

// TestPipelineRefusesOtherCheckpoint: a stage serving different weights is refused at the
// handshake, over either transport, with an error that says what to do.
func TestPipelineRefusesOtherCheckpoint(t *testing.T) {
	exe := testenv.Hippo(t)
	a := synthesize(t, "tiny-qwen3", 0)
	b := testmodel.Synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 99})
	for _, tr := range []string{"tcp", pipeline.TransportRing} {
		t.Run(tr, func(t *testing.T) {
			c := Config{Stages: 2, Transport: tr}
			planA, err := PlanFor(a, c)
			if err != nil {
				t.Fatal(err)
			}
			planB, err := PlanFor(b, c)
			if err != nil {
				t.Fatal(err)
			}
			local, err := pipeline.Launch(context.Background(), exe, planB)
			if err != nil {
				t.Fatal(err)
			}
			defer local.Stop()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			d, err := pipeline.OpenDriver(ctx, planA, local.Addr)
			if err == nil {
				d.Close()
				t.Fatal("driver accepted a stage that serves another checkpoint")
			}
			if !errors.Is(err, transport.ErrModelMismatch) || !strings.Contains(err.Error(), "same checkpoint") {
				t.Errorf("OpenDriver error = %v; want a model mismatch that says to use the same checkpoint", err)
			}
		})
	}
}

// TestPipelineSpecMatchesStandalone: speculation across the pipeline (drafting at the driver, one
// pipeline pass per block, every stage trimmed after a rejection) keeps greedy output identical.
func TestPipelineSpecMatchesStandalone(t *testing.T) {
	exe := testenv.Hippo(t)
	dir := synthesize(t, "tiny-qwen3", 0)
	// The same shape with other weights: drafts are mostly rejected.
	other := testmodel.Synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 77, Layers: 2})
	self := dir
	c := Config{Model: dir, Prompt: "one two three, one two three, one two", MaxTokens: 32, IgnoreEOS: true}
	e, err := engines.Open(context.Background(), engines.Options{Model: dir})
	if err != nil {
		t.Fatal(err)
	}
	want, err := Standalone(context.Background(), e, c, nil)
	e.Close()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, drafter, draft string
		k, stages            int
	}{
		{"lookup k4", "lookup", "", 4, 2},
		{"self-draft k4 3 stages", "model", self, 4, 3},
		{"rejecting draft k3", "model", other, 3, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Pipelines{Exe: exe}
			defer p.Close()
			cc := c
			cc.Mode, cc.Drafter, cc.Draft, cc.DraftTokens, cc.Stages = "pipeline+spec", tc.drafter, tc.draft, tc.k, tc.stages
			got, err := p.Run(context.Background(), dir, cc, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Tokens, want.Tokens) {
				t.Fatalf("pipeline+spec tokens = %v; standalone %v", got.Tokens, want.Tokens)
			}
			if got.Acceptance == nil {
				t.Fatal("no acceptance statistics")
			}
			t.Logf("acceptance %+v over %d steps", *got.Acceptance, len(got.Steps))
		})
	}
}

// TestPipelineSpecDFlashMatchesStandalone is invariant 3 across the pipeline for the DFlash
// drafter: every stage returns the tapped layers it runs, the driver drafts beside stage 0, and the
// output equals standalone greedy decoding token for token, over 2 stages (layer 1 local, layer 2
// remote) and 3. The drafts depend only on the features, so the acceptance statistics equal those
// of the standalone spec mode with the same draft. Over 2 stages it also samples (see below).
func TestPipelineSpecDFlashMatchesStandalone(t *testing.T) {
	exe := testenv.Hippo(t)
	dir := synthesize(t, "tiny-qwen3", 0)
	draft := t.TempDir()
	w := mlx.NewWorker()
	err := w.Do(context.Background(), func() error {
		_, err := synth.WriteDFlash(synth.DFlashOptions{Options: synth.Options{Preset: "dflash-tiny", Seed: 3, Out: draft}, Target: dir})
		return err
	})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := Config{Model: dir, Prompt: "one two three, one two three, one two", MaxTokens: 24, IgnoreEOS: true, DraftTokens: 5}
	e, err := engines.Open(ctx, engines.Options{Model: dir})
	if err != nil {
		t.Fatal(err)
	}
	want, err := Standalone(ctx, e, c, nil)
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	d, err := engines.NewDFlashDrafter(ctx, e, draft)
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	spec, err := Spec(ctx, e, d, c, nil)
	d.Close()
	e.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(spec.Tokens, want.Tokens) {
		t.Fatalf("standalone spec tokens = %v; standalone %v", spec.Tokens, want.Tokens)
	}
	for _, stages := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d stages", stages), func(t *testing.T) {
			p := Pipelines{Exe: exe}
			defer p.Close()
			cc := c
			cc.Mode, cc.Drafter, cc.Draft, cc.Stages = "pipeline+spec", "dflash", draft, stages
			got, err := p.Run(ctx, dir, cc, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Tokens, want.Tokens) {
				t.Fatalf("pipeline+spec dflash tokens = %v; standalone %v", got.Tokens, want.Tokens)
			}
			if got.Acceptance == nil {
				t.Fatal("no acceptance statistics")
			}
			if g, s := *got.Acceptance, *spec.Acceptance; g.Drafted != s.Drafted || g.Accepted != s.Accepted || !slices.Equal(g.ByPosition, s.ByPosition) {
				t.Errorf("pipeline+spec acceptance %+v; standalone spec %+v (the same drafts)", g, s)
			}
			t.Logf("acceptance %+v over %d steps", *got.Acceptance, len(got.Steps))
			if stages != 2 {
				return
			}
			// Sampled, the drafter truncates its proposals on its device (DraftTop) and the last
			// stage checks them on the wire; the same seed repeats its tokens.
			cc.Temperature, cc.Seed = 0.8, 5
			var runs [2][]int
			for i := range runs {
				got, err := p.Run(ctx, dir, cc, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(got.Tokens) != cc.MaxTokens || got.Acceptance == nil || got.Acceptance.Drafted == 0 {
					t.Fatalf("sampled pipeline+spec dflash: %d tokens, acceptance %v; want %d tokens and some drafts", len(got.Tokens), got.Acceptance, cc.MaxTokens)
				}
				runs[i] = got.Tokens
			}
			if !slices.Equal(runs[0], runs[1]) {
				t.Errorf("sampled pipeline+spec dflash with one seed made %v, then %v; want the same tokens", runs[0], runs[1])
			}
		})
	}
}
