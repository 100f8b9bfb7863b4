package bench

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// TestRingPipelineMatchesStandalone is invariant 2 over MLX's ring: stage k is MLX rank k, hidden
// states and replies travel as MLX arrays between ring neighbours, and the tokens are the
// standalone engine's, token for token. Sampled runs draw from the last stage's top-k
// candidates, so they must equal the same run over TCP.
func TestRingPipelineMatchesStandalone(t *testing.T) {
	exe := testenv.Hippo(t)
	dir := synthesize(t, "tiny-qwen3", 0)
	cases := []struct {
		name string
		c    Config
	}{
		{"2 stages", Config{Stages: 2}},
		{"3 stages", Config{Stages: 3}},
		{"uneven split", Config{Split: "0:1,1:4"}},
		{"bf16", Config{Stages: 2, Dtype: "bf16"}},
		{"top-k replies", Config{Stages: 2, Reply: "topk:8"}},
		{"sampled 3 stages", Config{Stages: 3, Temperature: 0.8, TopP: 0.9, Seed: 7}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.Model, c.Prompt, c.MaxTokens, c.IgnoreEOS = dir, pipelinePrompt, 24, true
			var want Result
			if c.Temperature == 0 {
				e, err := engines.Open(context.Background(), engines.Options{Model: dir, DType: c.Dtype})
				if err != nil {
					t.Fatal(err)
				}
				want, err = Standalone(context.Background(), e, c, nil)
				e.Close()
				if err != nil {
					t.Fatal(err)
				}
			} else {
				p := Pipelines{Exe: exe}
				var err error
				want, err = p.Run(context.Background(), dir, c, nil)
				p.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
			c.Transport = pipeline.TransportRing
			p := Pipelines{Exe: exe}
			defer p.Close()
			got, err := p.Run(context.Background(), dir, c, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got.Transport != pipeline.TransportRing {
				t.Errorf("result transport = %q; want %q", got.Transport, pipeline.TransportRing)
			}
			if !slices.Equal(got.Tokens, want.Tokens) {
				t.Fatalf("mlx-ring pipeline tokens = %v; want %v", got.Tokens, want.Tokens)
			}
			stages := max(c.Stages, strings.Count(c.Split, ",")+1)
			for i, s := range got.Steps {
				if len(s.StageForwardMS) != stages || s.Bytes == 0 {
					t.Fatalf("step %d = %+v; want %d stage timings and a byte count", i, s, stages)
				}
				for k, ms := range s.StageForwardMS {
					if ms <= 0 {
						t.Fatalf("step %d: stage %d forward %v ms; want every stage's own time", i, k, ms)
					}
				}
			}
		})
	}
}

// TestRingPipelineStageKilled: over MLX's ring too, a stage that dies mid-generation makes the
// driver fail within 5 s with an error, never a hang.
func TestRingPipelineStageKilled(t *testing.T) {
	err := killStageMidRun(t, pipeline.TransportRing)
	if !strings.Contains(err.Error(), "mlx-ring") {
		t.Errorf("error %q does not say the ring broke", err)
	}
	t.Logf("error after kill: %v", err)
}

// TestRingPlanErrors: configurations the ring cannot run are refused with what to do.
func TestRingPlanErrors(t *testing.T) {
	dir := synthesize(t, "tiny-qwen3", 0)
	cases := []struct {
		name string
		c    Config
		want string
	}{
		{"unknown transport", Config{Transport: "pigeon"}, "use tcp, mlx-ring or mlx-jaccl"},
		{"shaped link", Config{Transport: pipeline.TransportRing, Link: "wifi"}, "--link loopback"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PlanFor(dir, tc.c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("PlanFor(%+v) = %v; want an error containing %q", tc.c, err, tc.want)
			}
		})
	}
	var p Pipelines
	_, err := p.Run(context.Background(), dir, Config{Mode: "pipeline+spec", Drafter: "lookup", DraftTokens: 2, Transport: pipeline.TransportRing}, nil)
	if err == nil || !strings.Contains(err.Error(), "tcp only") {
		t.Errorf("pipeline+spec over mlx-ring = %v; want a refusal", err)
	}
}
