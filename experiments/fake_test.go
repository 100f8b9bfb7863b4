package experiments

import (
	"context"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hippo-bench/hippo/bench"
)

// fakeExecutor produces deterministic synthetic results from the configuration, its seed and how
// many times it has been run, sleeping a little per run to simulate work.
type fakeExecutor struct {
	sleep time.Duration
	// fail lists modes that return an error, like an engine that does not support them yet.
	fail map[string]bool
	// block makes every run wait for its context (to test timeouts); ignoreCtx makes it ignore it.
	block     bool
	ignoreCtx bool

	mu    sync.Mutex
	calls map[string]int
	runs  []bench.Config
}

var _ Executor = (*fakeExecutor)(nil)

var errUnsupported = errors.New("fake: mode not supported")

func (f *fakeExecutor) Run(ctx context.Context, c bench.Config) (bench.Result, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	key := configJSON(c)
	n := f.calls[key]
	f.calls[key]++
	f.runs = append(f.runs, c)
	f.mu.Unlock()

	if f.ignoreCtx {
		time.Sleep(time.Hour)
	}
	if f.block {
		<-ctx.Done()
		return bench.Result{}, ctx.Err()
	}
	select {
	case <-time.After(f.sleep):
	case <-ctx.Done():
		return bench.Result{}, ctx.Err()
	}
	if f.fail[c.Mode] {
		return bench.Result{}, errUnsupported
	}
	return fakeResult(c, n), nil
}

// fakeResult models a step as forward + network (pipelines) + sampling + drafting (spec), with
// noise seeded by the configuration, its seed and the call index.
func fakeResult(c bench.Config, call int) bench.Result {
	h := fnv.New64a()
	h.Write([]byte(configJSON(c)))
	rng := rand.New(rand.NewPCG(h.Sum64()^c.Seed, uint64(call)))
	noise := func(x float64) float64 { return x * (0.9 + 0.2*rng.Float64()) }
	linkMS := map[string]float64{"loopback": 0.05, "thunderbolt": 0.6, "wifi": 8, "ethernet-1g": 0.3, "ethernet-10g": 0.15}[c.Link]
	res := bench.Result{Mode: c.Mode, Model: c.Model, PromptTokens: len(c.Prompt) / 4, Link: c.Link, Transport: c.Transport, Stages: c.Stages}
	spec := c.Mode == "spec" || c.Mode == "pipeline+spec"
	var acc bench.Acceptance
	tokens, totalMS := 0, 0.0
	for tokens < max(c.MaxTokens, 1) {
		st := bench.Step{ForwardMS: noise(20), SampleMS: noise(0.3), Tokens: 1}
		if c.Stages > 1 {
			for range c.Stages {
				st.StageForwardMS = append(st.StageForwardMS, st.ForwardMS/float64(c.Stages))
			}
			st.NetworkMS = noise(linkMS * float64(c.Stages))
		}
		if spec {
			k := max(c.DraftTokens, 1)
			st.DraftMS = noise(0.5 * float64(k))
			for range k {
				if rng.Float64() > 0.7 {
					break
				}
				st.Accepted++
			}
			st.Tokens = st.Accepted + 1
			acc.Drafted += k
			acc.Accepted += st.Accepted
		}
		tokens += st.Tokens
		totalMS += st.ForwardMS + st.NetworkMS + st.SampleMS + st.DraftMS
		res.Steps = append(res.Steps, st)
	}
	for i := range tokens {
		res.Tokens = append(res.Tokens, i)
	}
	res.FinishReason = "length"
	res.TTFTMS = noise(50)
	res.PrefillTokS = noise(400)
	res.DecodeTokS = float64(tokens) / totalMS * 1000
	if spec {
		acc.Rate = float64(acc.Accepted) / float64(acc.Drafted)
		acc.MeanAccepted = float64(acc.Accepted) / float64(len(res.Steps))
		res.Acceptance = &acc
	}
	return res
}
