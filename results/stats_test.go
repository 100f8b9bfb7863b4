package results

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/hippo-bench/hippo/bench"
)

var approx = cmpopts.EquateApprox(0, 1e-4)

func TestDescribe(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name string
		xs   []float64
		want Estimate
	}{
		// sd = sqrt(10); t(0.975, 4) = 2.7764451; half width = 2.7764451 * sqrt(10) / sqrt(5) = 3.926486.
		{"five", []float64{18, 10, 14, 12, 16}, Estimate{N: 5, Mean: 14, Stddev: math.Sqrt(10), CILow: 14 - 3.926486, CIHigh: 14 + 3.926486, Median: 14}},
		// t(0.975, 1) = 12.7062047; sd = sqrt(50); half = 12.7062047 * sqrt(50) / sqrt(2) = 63.531024.
		{"two", []float64{10, 20}, Estimate{N: 2, Mean: 15, Stddev: math.Sqrt(50), CILow: 15 - 63.531024, CIHigh: 15 + 63.531024, Median: 15}},
		{"one", []float64{7}, Estimate{N: 1, Mean: 7, Stddev: nan, CILow: nan, CIHigh: nan, Median: 7}},
		{"none", nil, Estimate{Mean: nan, Stddev: nan, CILow: nan, CIHigh: nan, Median: nan}},
		{"NaN dropped", []float64{1, nan, 2, 3, 4}, Estimate{N: 4, Mean: 2.5, Stddev: 1.2909944, CILow: 2.5 - 3.1824463*1.2909944/2, CIHigh: 2.5 + 3.1824463*1.2909944/2, Median: 2.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Describe(tt.xs)
			if diff := cmp.Diff(tt.want, got, approx, cmpopts.EquateNaNs()); diff != "" {
				t.Errorf("Describe(%v) mismatch (-want +got):\n%s", tt.xs, diff)
			}
		})
	}
}

func TestDistribute(t *testing.T) {
	got := Distribute([]float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1})
	// Empirical quantiles: p90 is the 9th of 10 sorted samples, p99 the 10th.
	want := Distribution{N: 10, Mean: 5.5, Median: 5.5, P90: 9, P99: 10, Max: 10}
	if diff := cmp.Diff(want, got, approx); diff != "" {
		t.Errorf("Distribute mismatch (-want +got):\n%s", diff)
	}
}

func TestWelchTTest(t *testing.T) {
	// Reference: t = 1.8973666, df = 5.8823529, p = 0.1075312 (R's t.test(b, a), and a numerical
	// integration of the t density).
	got := WelchTTest([]float64{1, 2, 3, 4, 5}, []float64{2, 4, 6, 8, 10})
	want := TTest{T: 1.8973666, DF: 5.8823529, P: 0.1075312}
	if diff := cmp.Diff(want, got, approx); diff != "" {
		t.Errorf("WelchTTest mismatch (-want +got):\n%s", diff)
	}
	if got := WelchTTest([]float64{1}, []float64{2, 3}); !math.IsNaN(got.P) {
		t.Errorf("WelchTTest with n=1: p = %v; want NaN", got.P)
	}
	if got := WelchTTest([]float64{2, 2}, []float64{2, 2}); got.P != 1 {
		t.Errorf("WelchTTest of identical constants: p = %v; want 1", got.P)
	}
}

func stepsRun(id string, decode float64, steps []bench.Step, acc *bench.Acceptance) Record {
	return Record{ID: id, Config: bench.Config{Model: "m", Mode: "pipeline+spec", Stages: 2, Link: "wifi", Drafter: "lookup", DraftTokens: 2, Prompt: id},
		Result: &bench.Result{DecodeTokS: decode, TTFTMS: decode * 2, Steps: steps, Acceptance: acc}}
}

func TestSummarize(t *testing.T) {
	r1 := stepsRun("r1", 10, []bench.Step{
		{ForwardMS: 10, StageForwardMS: []float64{4, 6}, NetworkMS: 1, HopNetworkMS: []float64{0.4, 0.6}, SampleMS: 0.5, DraftMS: 0, Tokens: 1},
		{ForwardMS: 20, StageForwardMS: []float64{8, 12}, NetworkMS: 3, HopNetworkMS: []float64{1, 2}, SampleMS: 0.5, Tokens: 3},
	}, &bench.Acceptance{Drafted: 10, Accepted: 5})
	r2 := stepsRun("r2", 20, []bench.Step{{ForwardMS: 30, StageForwardMS: []float64{10, 20}, NetworkMS: 2, HopNetworkMS: []float64{0.5, 1.5}, SampleMS: 1, Tokens: 2}}, &bench.Acceptance{Drafted: 10, Accepted: 8})
	warm := stepsRun("w", 1000, nil, nil)
	warm.Warmup = true
	failed := stepsRun("f", 0, nil, nil)
	failed.Result, failed.Error = nil, "boom"
	retried := stepsRun("r2", 0, nil, nil) // an earlier failed attempt of r2
	retried.Result, retried.Error = nil, "first attempt failed"

	sums := Summarize([]Record{warm, retried, r1, failed, r2})
	if len(sums) != 1 {
		t.Fatalf("Summarize = %d summaries; want 1 (prompts are samples of one configuration)", len(sums))
	}
	s := sums[0]
	if s.Prompts != 3 || s.Failed != 1 || s.DecodeTokS.N != 2 {
		t.Errorf("prompts=%d failed=%d n=%d; want 3, 1, 2", s.Prompts, s.Failed, s.DecodeTokS.N)
	}
	if diff := cmp.Diff(Describe([]float64{10, 20}), s.DecodeTokS, approx); diff != "" {
		t.Errorf("DecodeTokS (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Estimate{N: 2, Mean: 30, Stddev: math.Sqrt(200), CILow: 30 - 127.062047, CIHigh: 30 + 127.062047, Median: 30}, s.TTFTMS, approx); diff != "" {
		t.Errorf("TTFTMS (-want +got):\n%s", diff)
	}
	// Step totals: 11.5, 23.5, 33.
	if diff := cmp.Diff(Distribution{N: 3, Mean: 68.0 / 3, Median: 23.5, P90: 33, P99: 33, Max: 33}, s.Step, approx); diff != "" {
		t.Errorf("Step (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Distribution{N: 3, Mean: 20, Median: 20, P90: 30, P99: 30, Max: 30}, s.Forward, approx); diff != "" {
		t.Errorf("Forward (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Distribution{
		{N: 3, Mean: 22.0 / 3, Median: 8, P90: 10, P99: 10, Max: 10},
		{N: 3, Mean: 38.0 / 3, Median: 12, P90: 20, P99: 20, Max: 20},
	}, s.StageForward, approx); diff != "" {
		t.Errorf("StageForward (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Distribution{
		{N: 3, Mean: 1.9 / 3, Median: 0.5, P90: 1, P99: 1, Max: 1},
		{N: 3, Mean: 4.1 / 3, Median: 1.5, P90: 2, P99: 2, Max: 2},
	}, s.HopNetwork, approx); diff != "" {
		t.Errorf("HopNetwork (-want +got):\n%s", diff)
	}
	if s.Draft.N != 0 {
		t.Errorf("Draft.N = %d; want 0 (no step drafted time)", s.Draft.N)
	}
	if math.Abs(s.NetworkShare-6.0/68) > 1e-9 {
		t.Errorf("NetworkShare = %v; want 6/68", s.NetworkShare)
	}
	if math.Abs(s.TokensPerStep-2) > 1e-9 {
		t.Errorf("TokensPerStep = %v; want 2", s.TokensPerStep)
	}
	if s.Acceptance == nil || math.Abs(s.Acceptance.Mean-0.65) > 1e-9 || s.Drafted != 20 || s.Accepted != 13 {
		t.Errorf("acceptance = %+v, %d/%d; want mean 0.65, 13/20", s.Acceptance, s.Accepted, s.Drafted)
	}
}

func TestLabels(t *testing.T) {
	tests := []struct {
		name    string
		configs []bench.Config
		want    []string
	}{
		{"modes and links", []bench.Config{
			{Model: "m", Mode: "standalone", MaxTokens: 16},
			{Model: "m", Mode: "pipeline", Stages: 2, Link: "wifi", MaxTokens: 16},
			{Model: "m", Mode: "pipeline", Stages: 2, Link: "thunderbolt", MaxTokens: 16},
		}, []string{"standalone", "pipeline link=wifi", "pipeline link=thunderbolt"}},
		{"models by base name", []bench.Config{
			{Model: "/models/Qwen3-4B", Mode: "standalone"},
			{Model: "synth:qwen3-0.6b", Mode: "standalone"},
		}, []string{"Qwen3-4B", "synth:qwen3-0.6b"}},
		{"only presence differs", []bench.Config{
			{Model: "m", Mode: "spec", Drafter: "lookup"},
			{Model: "m", Mode: "spec", Drafter: "lookup", DraftTokens: 4},
		}, []string{"draft_tokens=-", "draft_tokens=4"}},
		{"nothing differs", []bench.Config{{Model: "m", Mode: "spec"}}, []string{"spec"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Labels(tt.configs)); diff != "" {
				t.Errorf("Labels mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAnalytic(t *testing.T) {
	tests := []struct {
		a, q, c0, c float64
		k           int
		want        float64
	}{
		{0.8, 1, 0, 0, 4, (1 - math.Pow(0.8, 5)) / 0.2}, // 3.3616 tokens per step, free drafts
		{0.8, 1, 0, 0.1, 4, 3.3616 / 1.4},
		{0.8, 1, 0.3, 0.1, 4, 3.3616 / 1.7}, // a block drafter's fixed cost per step
		{1, 1, 0, 0, 3, 4},
		{0, 1, 0, 0.5, 2, 0.5},
		{0.8, 0.25, 0, 0, 4, 1 + 0.25*2.3616}, // drafts at a quarter of the steps (lookup)
		{0.8, 0, 0, 0, 4, 1},
	}
	for _, tt := range tests {
		if got := Analytic(tt.a, tt.q, tt.c0, tt.c, tt.k); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("Analytic(%v, %v, %v, %v, %d) = %v; want %v", tt.a, tt.q, tt.c0, tt.c, tt.k, got, tt.want)
		}
	}
}

func TestCompare(t *testing.T) {
	mk := func(mode string, xs ...float64) []Record {
		var out []Record
		for i, x := range xs {
			c := bench.Config{Model: "m", Mode: mode, Prompt: "p"}
			out = append(out, Record{ID: RecordID(c, i, false), Config: c, Result: &bench.Result{DecodeTokS: x}})
		}
		return out
	}
	a := append(mk("standalone", 1, 2, 3, 4, 5), mk("spec", 7, 7)...)
	b := append(mk("standalone", 2, 4, 6, 8, 10), mk("pipeline", 3, 3)...)
	cs := Compare(a, b)
	if len(cs) != 3 {
		t.Fatalf("Compare = %d rows; want 3", len(cs))
	}
	if math.Abs(cs[0].Ratio-2) > 1e-9 || math.Abs(cs[0].Test.P-0.1075312) > 1e-6 {
		t.Errorf("standalone: ratio %v p %v; want 2, 0.1075", cs[0].Ratio, cs[0].Test.P)
	}
	if !math.IsNaN(cs[1].Ratio) || cs[1].B.N != 0 {
		t.Errorf("spec (A only): ratio %v nB %d; want NaN, 0", cs[1].Ratio, cs[1].B.N)
	}
	var out strings.Builder
	if err := WriteComparison(&out, cs, 0.05); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"standalone", "2.000", "0.1075", "Welch"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("comparison output lacks %q:\n%s", want, out.String())
		}
	}
}
