package pipeline_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/transport"
)

// autoContext is the context cap of the split tests: it keeps the KV cache small, so that the
// figures below are about the layers.
const autoContext = 256

// startRanks serves stages 1..len(free)-1 of plan in this process, on loopback, without a split:
// each waits for the driver's assignment and reports free[k]. It returns stage 1's address.
func startRanks(t *testing.T, plan pipeline.Plan, free []int64) string {
	t.Helper()
	plan.Split = nil
	ctx, cancel := context.WithCancel(context.Background())
	ranks := make([]*pipeline.Rank, len(free))
	lns := make([]*transport.Listener, len(free))
	for k := 1; k < len(free); k++ {
		ranks[k] = &pipeline.Rank{Plan: plan, Stage: k, FreeMemory: free[k]}
		ln, err := ranks[k].Listen(ctx, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[k] = ln
		if k > 1 {
			ranks[k-1].Next = ln.Addr().String()
		}
	}
	done := make(chan error, len(free))
	for k := 1; k < len(free); k++ {
		go func() { done <- ranks[k].Serve(ctx, lns[k]) }()
	}
	t.Cleanup(func() {
		cancel()
		for k := 1; k < len(free); k++ {
			lns[k].Close()
		}
		for k := 1; k < len(free); k++ {
			if err := <-done; err != nil {
				t.Errorf("rank: %v", err)
			}
		}
	})
	return lns[1].Addr().String()
}

// TestSplitByFreeMemory runs a driver and three ranks that report different free memory: the
// driver must give them contiguous layer ranges weighted by it, the ranks must load what they are
// assigned, and the run must equal standalone. The same ranks then take an explicit split.
func TestSplitByFreeMemory(t *testing.T) {
	m := synthesize(t, "deep-narrow")
	cfg, want := m.cfg, m.standalone(t)

	// Free memory in units of about one layer, beyond the runtime every stage needs anyway.
	est := engines.EstimateMemory(cfg, mlx.Float32, autoContext)
	unit := (est.Weights + est.KVCache) / int64(cfg.NumLayers)
	free := []int64{est.Overhead + 10*unit, est.Overhead + 15*unit, est.Overhead + 20*unit, est.Overhead + 30*unit}
	wantSplit, err := engines.SplitByMemory(cfg, mlx.Float32, autoContext, free)
	if err != nil {
		t.Fatal(err)
	}
	plan := m.plan(t, "0:9,9:18,18:27,27:36")
	placeholder := plan.Split
	plan.Context, plan.AutoSplit, plan.FreeMemory = autoContext, true, free[0]
	addr := startRanks(t, plan, free)

	generate := func(t *testing.T, plan pipeline.Plan) []model.Range {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		d, err := pipeline.OpenDriver(ctx, plan, addr)
		if err != nil {
			t.Fatalf("OpenDriver: %v", err)
		}
		defer d.Close()
		got, err := d.Generate(ctx, testRequest, func(engines.Token) error { return nil })
		if err != nil {
			t.Fatalf("Generate: %v", err)
		}
		if !slices.Equal(got.Tokens, want) {
			t.Errorf("pipeline tokens %v; want standalone %v", got.Tokens, want)
		}
		return d.Split()
	}
	t.Run("weighted by free memory", func(t *testing.T) {
		split := generate(t, plan)
		t.Logf("free memory %v: split %s", free, pipeline.FormatSplit(split))
		if !slices.Equal(split, wantSplit) {
			t.Errorf("split %s; want %s from free memory %v", pipeline.FormatSplit(split), pipeline.FormatSplit(wantSplit), free)
		}
		for s := 1; s < len(split); s++ {
			if a, b := split[s-1].To-split[s-1].From, split[s].To-split[s].From; a >= b {
				t.Errorf("split %s: stage %d has %d layers, stage %d with more free memory %d; want more", pipeline.FormatSplit(split), s-1, a, s, b)
			}
		}
	})
	t.Run("explicit split reassigns", func(t *testing.T) {
		p := plan
		p.AutoSplit = false
		if split := generate(t, p); !slices.Equal(split, placeholder) {
			t.Errorf("split %s; want the explicit %s", pipeline.FormatSplit(split), pipeline.FormatSplit(placeholder))
		}
	})
}

// fakeRank answers the driver's memory survey with m, as a broken or lying rank would.
func fakeRank(t *testing.T, plan pipeline.Plan, m *transport.Memory) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	id := transport.Identity{Model: plan.Fingerprint, TotalLayers: plan.Layers, DType: transport.Float32, Stage: 1}
	ln, err := transport.Listen(ctx, "127.0.0.1:0", transport.Options{Self: id})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			f, err := c.Recv(ctx)
			if err == nil && f.Type == transport.TypeSurvey {
				c.Send(ctx, f.Session, f.Seq, m)
				c.Recv(ctx) // until the driver hangs up
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { cancel(); ln.Close(); <-done })
	return ln.Addr().String()
}

func TestSplitByFreeMemoryRefusesBadReports(t *testing.T) {
	plan := synthesize(t, "tiny-qwen3").plan(t, "0:2,2:4")
	plan.Context, plan.AutoSplit, plan.FreeMemory = autoContext, true, 8<<30
	for _, tc := range []struct {
		name   string
		report []transport.StageMemory
		want   string
		is     error
	}{
		{"zero memory", []transport.StageMemory{{Stage: 1, Free: 0}}, "stage 1 reports no free memory", engines.ErrMemory},
		{"too little for any layer", []transport.StageMemory{{Stage: 1, Free: 1 << 20}}, "stage 1 offers 1.0 MiB, less than its smallest share", engines.ErrMemory},
		{"a lie beyond limits", []transport.StageMemory{{Stage: 1, Free: transport.MaxFreeMemory + 1}}, "more than any machine has", transport.ErrBadFrame},
		{"another stage", []transport.StageMemory{{Stage: 2, Free: 8 << 30}}, "answered the memory survey as stage 2", transport.ErrRange},
		{"no answer for a stage", nil, "0 ranks answered the memory survey", transport.ErrRange},
		{"two answers for a stage", []transport.StageMemory{{Stage: 1, Free: 8 << 30}, {Stage: 1, Free: 8 << 30}}, "2 ranks answered", transport.ErrRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeRank(t, plan, &transport.Memory{Stages: tc.report})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			d, err := pipeline.OpenDriver(ctx, plan, addr)
			if err == nil {
				d.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.is) {
				t.Errorf("OpenDriver = %v; want an error containing %q that is %v", err, tc.want, tc.is)
			}
		})
	}
}
