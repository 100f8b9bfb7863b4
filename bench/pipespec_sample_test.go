package bench

import (
	"context"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"gonum.org/v1/gonum/stat/distuv"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/launch"
	"github.com/hippo-bench/hippo/engines/pipeline"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
	"github.com/hippo-bench/hippo/internal/testmodel"
)

// fixedDrafter proposes one token drawn from a fixed distribution q, and returns q with it; with
// q nil it proposes token det, deterministically (no distribution: one-hot). independent says
// its drafts may be redrawn (the driver then truncates q, see Driver.ProposalTopK).
type fixedDrafter struct {
	q           []float32
	det         int
	independent bool
}

func (f fixedDrafter) Reset(context.Context) error { return nil }

func (f fixedDrafter) IndependentDrafts() bool { return f.independent }

func (f fixedDrafter) Draft(_ context.Context, _ []int, k int, temperature float64, rng *rand.Rand) ([]int, [][]float32, error) {
	if f.q == nil {
		return []int{f.det}, nil, nil
	}
	u := rng.Float64()
	for id, p := range f.q {
		if u -= float64(p); u < 0 {
			return []int{id}, [][]float32{f.q}, nil
		}
	}
	return []int{len(f.q) - 1}, [][]float32{f.q}, nil
}

// truncatingDrafter is fixedDrafter with q that truncates q itself, as a DFlash drafter does on
// its device for a pipeline (DraftTop): it draws its token from q's topK likeliest tokens,
// renormalised, and returns that sparse distribution, which the driver sends as it is.
type truncatingDrafter struct{ fixedDrafter }

func (f truncatingDrafter) DraftTop(_ context.Context, _ []int, k, topK int, _ float64, rng *rand.Rand) ([]int, [][]engines.TokenProb, error) {
	order := make([]int, len(f.q))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return f.q[order[i]] > f.q[order[j]] })
	var row []engines.TokenProb
	var sum float64
	for _, id := range order[:topK] {
		if f.q[id] > 0 {
			row = append(row, engines.TokenProb{ID: id, P: f.q[id]})
			sum += float64(f.q[id])
		}
	}
	for i := range row {
		row[i].P = float32(float64(row[i].P) / sum)
	}
	u := rng.Float64()
	for _, e := range row {
		if u -= float64(e.P); u < 0 {
			return []int{e.ID}, [][]engines.TokenProb{row}, nil
		}
	}
	return []int{row[len(row)-1].ID}, [][]engines.TokenProb{row}, nil
}

// chiSquare is Pearson's statistic of counts (n draws) against the probabilities want, with the
// bins expected below 5 draws pooled into one; it returns the statistic and its degrees of freedom.
func chiSquare(counts []float64, want []float64, n float64) (float64, int) {
	var chi, poolC, poolE float64
	bins := 0
	for i, c := range counts {
		e := want[i] * n
		if e < 5 {
			poolC, poolE = poolC+c, poolE+e
			continue
		}
		chi += (c - e) * (c - e) / e
		bins++
	}
	if poolE > 0 {
		chi += (poolC - poolE) * (poolC - poolE) / poolE
		bins++
	}
	return chi, bins - 1
}

// TestPipelineSpecSamplingKeepsTargetDistribution is the rejection rule across the pipeline:
// sampled pipeline+spec (2 stages, the last one applying the rule on its device) must make tokens
// distributed as the target's own samples. The target is tiny-qwen3 with a 64-token vocabulary,
// at temperature 0.35 (peaked enough that the conditional tests get draws). The requests take
// turns among four drafters: one drafts a token from a fixed distribution q unlike the target's
// (half its mass on the four likeliest second tokens after the likeliest first token, half on
// four of the least likely), sent with the draft; one is the same but lets the driver truncate q
// to 4 tokens and redraw (Driver.ProposalTopK); one truncates q to 4 tokens itself and sends
// that sparse distribution (DraftTop, as a DFlash drafter does on its device); one drafts the
// least likely of them deterministically (one-hot, nothing sent). So drafts are kept and rejected (the residual draw)
// on every path, and on each the second token must follow the target. Over 1000 seeded
// requests of two tokens, the first token (drawn by the last stage from the whole distribution)
// and the second given each of the three likeliest first tokens are compared with the exact
// target probabilities (from the standalone engine's log-probabilities) by Pearson's chi-square
// test at significance 0.001 (the three conditional tests summed, their degrees of freedom too),
// bins expected below 5 pooled. The second tokens after the likeliest first must fail the test
// against q, so the test can tell the rule from the stochastic drafter. Seeds are fixed: the
// outcome is reproducible.
func TestPipelineSpecSamplingKeepsTargetDistribution(t *testing.T) {
	const (
		vocab       = 64
		temperature = 0.35
		n           = 1000
		alpha       = 0.001
	)
	exe := testenv.Hippo(t)
	dir := testmodel.Synthesize(t, synth.Options{Preset: "tiny-qwen3", Seed: 21, Set: []string{"vocab_size=64"}})
	ctx := context.Background()
	prompt := []int{3, 14, 15}
	e, err := engines.Open(ctx, engines.Options{Model: dir})
	if err != nil {
		t.Fatal(err)
	}
	// dist is the target's distribution at the temperature after history.
	dist := func(history []int) []float64 {
		t.Helper()
		out := make([]float64, vocab)
		var sum float64
		for id := range out {
			lp, err := e.LogProbs(ctx, append(append([]int(nil), history...), id))
			if err != nil {
				t.Fatal(err)
			}
			out[id] = math.Exp(lp[len(lp)-1] / temperature)
			sum += out[id]
		}
		for id := range out {
			out[id] /= sum
		}
		return out
	}
	// byProb lists the tokens from the likeliest under p.
	byProb := func(p []float64) []int {
		order := make([]int, len(p))
		for i := range order {
			order[i] = i
		}
		sort.SliceStable(order, func(i, j int) bool { return p[order[i]] > p[order[j]] })
		return order
	}
	p1 := dist(prompt)
	tops := byProb(p1)[:3]
	p2 := make([][]float64, len(tops))
	for i, t1 := range tops {
		p2[i] = dist(append(append([]int(nil), prompt...), t1))
	}
	e.Close()
	// q: half its mass on the four likeliest second tokens after the likeliest first, half on
	// four of the least likely.
	order := byProb(p2[0])
	q := make([]float32, vocab)
	for _, id := range append(order[:4:4], order[vocab-4:]...) {
		q[id] = 0.125
	}
	drafters := []engines.Drafter{fixedDrafter{q: q}, fixedDrafter{q: q, independent: true},
		truncatingDrafter{fixedDrafter{q: q, independent: true}}, fixedDrafter{det: order[vocab-1]}}

	plan, err := launch.Plan(launch.Config{Mode: launch.PipelineSpec, Model: dir, Stages: 2, Drafter: "lookup"})
	if err != nil {
		t.Fatal(err)
	}
	local, err := pipeline.Launch(ctx, exe, plan)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Stop()
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	d, err := pipeline.OpenDriver(dctx, plan, local.Addr)
	cancel()
	if err != nil {
		t.Fatalf("%v\n%s", err, local.Logs())
	}
	defer d.Close()
	d.ProposalTopK = 4
	first := make([]float64, vocab)
	second := make([][]float64, len(tops))
	given := make([]float64, len(tops))
	for i := range second {
		second[i] = make([]float64, vocab)
	}
	accepted := 0
	for i := range n {
		r := engines.Request{Tokens: prompt, MaxTokens: 2, Temperature: temperature, Seed: uint64(i), IgnoreEOS: true}
		st, ss, err := d.GenerateSpec(ctx, r, drafters[i%len(drafters)], 1, func(engines.Token) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Tokens) != 2 {
			t.Fatalf("request %d made %v; want 2 tokens", i, st.Tokens)
		}
		accepted += ss.Accepted
		first[st.Tokens[0]]++
		for j, t1 := range tops {
			if st.Tokens[0] == t1 {
				second[j][st.Tokens[1]]++
				given[j]++
			}
		}
	}
	// check sums the chi-square statistics of counts[j] against want[j] (draws[j] each).
	check := func(name string, counts, want [][]float64, draws []float64, wantPass bool) {
		t.Helper()
		var chi float64
		var df int
		for j := range counts {
			c, d := chiSquare(counts[j], want[j], draws[j])
			chi, df = chi+c, df+d
		}
		crit := distuv.ChiSquared{K: float64(df)}.Quantile(1 - alpha)
		t.Logf("%s: chi-square %.1f, %d degrees of freedom, critical value %.1f at %g", name, chi, df, crit, alpha)
		if wantPass && chi > crit {
			t.Errorf("%s: counts %v over %v draws; want %v: chi-square %.1f > %.1f (%d df, significance %g)", name, counts, draws, want, chi, crit, df, alpha)
		}
		if !wantPass && chi <= crit {
			t.Errorf("%s: the counts pass the chi-square test (%.1f <= %.1f) against the drafter's distribution too: the test cannot tell the rule from the drafter", name, chi, crit)
		}
	}
	t.Logf("first tokens %v in %v of %d requests; drafts kept %d of %d", tops, given, n, accepted, n)
	check("first token", [][]float64{first}, [][]float64{p1}, []float64{n}, true)
	check("second token after the three likeliest first", second, p2, given, true)
	q64 := make([]float64, vocab)
	for i, v := range q {
		q64[i] = float64(v)
	}
	check("second token after the likeliest first, against q", second[:1], [][]float64{q64}, given[:1], false)
}
