package bench

import (
	"fmt"
	"io"
	"math"
	"regexp"
	"strings"
	"testing"

	"github.com/hippo-bench/hippo/engines"
)

func TestAcceptanceRate(t *testing.T) {
	geom := func(a float64, k int) []float64 {
		var r []float64
		for i := 1; i <= k; i++ {
			r = append(r, math.Pow(a, float64(i)))
		}
		return r
	}
	tests := []struct {
		name  string
		byPos [][]float64
		steps []int
		want  float64
	}{
		// Drafts kept with probability a each, given the earlier ones were: a is recovered at
		// every K, where kept / drafted would read (a - a^(K+1)) / ((1 - a) K): 0.125 at K = 7.
		{"geometric K=7", [][]float64{geom(0.5, 7)}, []int{10}, 0.5},
		{"geometric, two K pooled", [][]float64{geom(0.3, 3), geom(0.3, 15)}, []int{40, 7}, 0.3},
		// Every step keeps position 1 and rejects position 2: 1 kept, 1 failed a step.
		{"one kept a step", [][]float64{{1, 0, 0}}, []int{5}, 0.5},
		{"all kept", [][]float64{{1, 1}}, []int{3}, 1},
		{"none kept", [][]float64{{0, 0, 0}}, []int{3}, 0},
		{"no steps", [][]float64{{0.5}}, []int{0}, math.NaN()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AcceptanceRate(tt.byPos, tt.steps)
			if math.IsNaN(tt.want) != math.IsNaN(got) || (!math.IsNaN(got) && math.Abs(got-tt.want) > 1e-12) {
				t.Errorf("AcceptanceRate(%v, %v) = %v; want %v", tt.byPos, tt.steps, got, tt.want)
			}
		})
	}
}

func TestExpectedTokens(t *testing.T) {
	tests := []struct {
		a    float64
		k    int
		want float64
	}{
		{0.5, 1, 1.5},
		{0.5, 3, 1.875},
		{1, 7, 8},
		{0, 15, 1},
	}
	for _, tt := range tests {
		if got := ExpectedTokens(tt.a, tt.k); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("ExpectedTokens(%v, %d) = %v; want %v", tt.a, tt.k, got, tt.want)
		}
	}
}

func TestExpectedStepTokens(t *testing.T) {
	tests := []struct {
		a    float64
		k    int
		q    float64
		want float64
	}{
		{0.5, 3, 1, 1.875},
		{0.5, 3, 0.5, 1.4375}, // half the steps draft: 1 + 0.5 * 0.875
		{0.9, 7, 0, 1},        // no step drafts: the target's own token each
	}
	for _, tt := range tests {
		if got := ExpectedStepTokens(tt.a, tt.k, tt.q); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("ExpectedStepTokens(%v, %d, %v) = %v; want %v", tt.a, tt.k, tt.q, got, tt.want)
		}
	}
}

func TestDraftingShare(t *testing.T) {
	if got := DraftingShare([]int{3, 1}, 8); got != 0.5 {
		t.Errorf("DraftingShare([3 1], 8) = %v; want 0.5", got)
	}
	if got := DraftingShare(nil, 0); got != 1 {
		t.Errorf("DraftingShare(nil, 0) = %v; want 1 (no steps: nothing says a drafter skipped any)", got)
	}
}

// TestFillSpecCountsStepsWithoutDrafts: steps at which the drafter proposed nothing are counted,
// so the acceptance estimates can leave them out.
func TestFillSpecCountsStepsWithoutDrafts(t *testing.T) {
	ss := engines.SpecStats{
		Drafted: 4, Accepted: 2, ByPosition: []int{2, 0}, DraftedByPosition: []int{2, 2},
		Steps: []engines.SpecStep{{Drafted: 2, Accepted: 2}, {Drafted: 0}, {Drafted: 2}, {Drafted: 0}, {Drafted: 0}},
	}
	res := &Result{Steps: make([]Step, len(ss.Steps))}
	fillSpec(res, engines.Stats{}, ss)
	a := res.Acceptance
	if a.NoDraftSteps != 3 || a.DraftingSteps(len(res.Steps)) != 2 {
		t.Errorf("NoDraftSteps %d, DraftingSteps %d; want 3, 2", a.NoDraftSteps, a.DraftingSteps(len(res.Steps)))
	}
	if fmt.Sprint(a.ByPosition) != "[1 0]" {
		t.Errorf("ByPosition %v; want [1 0] (over the steps that drafted)", a.ByPosition)
	}
}

// TestSpecVerdict: the summary line calls a speedup within its noise band, or one printed as
// 1.00x, break-even, and lists the draft lengths of each class even where they interleave.
func TestSpecVerdict(t *testing.T) {
	pts := func(speedups ...float64) []specPoint {
		var ps []specPoint
		for i, s := range speedups {
			ps = append(ps, specPoint{shown: i + 1, speedup: s})
		}
		return ps
	}
	tests := []struct {
		name  string
		label string
		pts   []specPoint
		want  string
	}{
		{"1.00x is break-even, not faster", "K", pts(1.004),
			"model: pays off at no K measured (best 1.00x at K=1); breaks even at K=1"},
		{"just above the printed resolution pays", "K", pts(1.006),
			"model: best 1.01x at K=1; pays off at every K measured"},
		{"within the noise band", "K", []specPoint{{shown: 1, speedup: 1.05, noise: 0.08}, {shown: 2, speedup: 0.93, noise: 0.08}},
			"model: pays off at no K measured (best 1.05x at K=1); breaks even at K=1,2"},
		{"beyond the noise band", "K", []specPoint{{shown: 1, speedup: 1.10, noise: 0.08}, {shown: 2, speedup: 0.90, noise: 0.08}},
			"model: best 1.10x at K=1; pays off at K=1; slower at K=2"},
		{"every K pays", "K", pts(1.2, 1.3, 1.1),
			"model: best 1.30x at K=2; pays off at every K measured"},
		{"non-contiguous", "K", pts(1.2, 1.0, 1.15, 0.8, 0.7, 0.6, 1.02),
			"model: best 1.20x at K=1; pays off at K=1,3,7; breaks even at K=2; slower at K=4-6"},
		{"none pays", "K", pts(0.95, 0.9, 0.8),
			"model: pays off at no K measured (best 0.95x at K=1); slower at K=1-3"},
		{"blocks", "B", []specPoint{{shown: 4, speedup: 1.4}, {shown: 8, speedup: 1.0}, {shown: 16, speedup: 0.7}},
			"model: best 1.40x at B=4; pays off at B=4; breaks even at B=8; slower at B=16"},
		{"nothing", "K", nil, "model: nothing measured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := specVerdict("model", tt.label, tt.pts); got != tt.want {
				t.Errorf("specVerdict(%+v) = %q; want %q", tt.pts, got, tt.want)
			}
		})
	}
}

func TestListLengths(t *testing.T) {
	tests := []struct {
		ks   []int
		want string
	}{
		{[]int{1}, "1"},
		{[]int{1, 2}, "1,2"},
		{[]int{1, 2, 3, 5, 7, 8}, "1-3,5,7,8"},
		{[]int{4, 8, 16}, "4,8,16"},
		{[]int{2, 3, 4, 5, 6, 7, 8}, "2-8"},
	}
	for _, tt := range tests {
		if got := listLengths(tt.ks); got != tt.want {
			t.Errorf("listLengths(%v) = %q; want %q", tt.ks, got, tt.want)
		}
	}
}

func TestSpeedupNoise(t *testing.T) {
	tests := []struct {
		name        string
		alone, spec []float64
		want        float64
	}{
		{"one pair measures no spread", []float64{10}, []float64{12}, 0},
		{"equal ratios", []float64{10, 20, 40}, []float64{12, 24, 48}, 0},
		// Ratios 1.1 and 0.9: sd 0.1414, n 2, t(0.975, 1) 12.706: 12.706 * 0.1414 / 1.4142.
		{"two pairs", []float64{10, 10}, []float64{11, 9}, 1.2706},
		// Ratios 1.2, 1.0, 1.1, 0.9 (sd 0.1291), t(0.975, 3) 3.1824: 3.1824 * 0.1291 / 2.
		{"four pairs", []float64{10, 10, 10, 10}, []float64{12, 10, 11, 9}, 0.2054},
		{"a zero standalone rate is skipped", []float64{0, 10, 10}, []float64{5, 11, 9}, 1.2706},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := speedupNoise(tt.alone, tt.spec); math.Abs(got-tt.want) > 1e-3 {
				t.Errorf("speedupNoise(%v, %v) = %.4f; want %.4f", tt.alone, tt.spec, got, tt.want)
			}
		})
	}
}

// TestSpecRowsVerifyCost: the table prints what a verify step cost relative to a standalone step
// (v) and the expected speedup at that cost beside Leviathan's, which counts a verify as one step.
func TestSpecRowsVerifyCost(t *testing.T) {
	row := func(draftMS float64) *specRow {
		return &specRow{
			k: 3, alone: []float64{10, 10}, spec: []float64{9, 9}, acc: []float64{0.3, 0.3}, tps: []float64{1.6, 1.6},
			draftMS: []float64{draftMS, draftMS}, stepMS: []float64{20, 20}, verifyMS: []float64{30, 30},
			byPos: [][]float64{{0.5, 0.2, 0.1}, {0.5, 0.2, 0.1}}, steps: []int{10, 10}, verifySteps: 20,
		}
	}
	for _, tc := range []struct {
		name    string
		draftMS float64
		c       float64
		draft   float64 // drafting per step, in target steps
	}{
		{"model", 0, 0.1, 0.3}, // K c
		{"dflash", 4, 0, 0.2},  // one draft forward: 4 ms over a 20 ms step
		{"lookup", 0, 0, 0},
	} {
		var b strings.Builder
		printSpecRows(&b, tc.name, "K", []*specRow{row(tc.draftMS)}, tc.c)
		a := AcceptanceRate(row(0).byPos, row(0).steps)
		want := fmt.Sprintf(`\s1\.50\s+%.2fx\s`, ExpectedStepTokens(a, 3, 1)/(tc.draft+1.5))
		if !regexp.MustCompile(want).MatchString(b.String()) {
			t.Errorf("%s: no %q (verify 30 ms over a 20 ms step, drafting %.1f steps) in\n%s", tc.name, want, tc.draft, b.String())
		}
	}
	// Drafts cut by confidence vary in length: no analytic column, which assumes K a step.
	gated := row(4)
	gated.gated = true
	var b strings.Builder
	printSpecRows(&b, "dflash", "B", []*specRow{gated}, 0)
	if !regexp.MustCompile(`0\.90x\s+0\.00\s+-\s+4\.0\s+0\.200\s+1\.50\s+-\s`).MatchString(b.String()) {
		t.Errorf("gated row: want both expected columns as -, in\n%s", b.String())
	}
}

// TestCompareSpecRejectsConfidence: a draft confidence outside [0, 1), or one without the dflash
// drafter, is refused before any model loads.
func TestCompareSpecRejectsConfidence(t *testing.T) {
	for _, tc := range []struct {
		drafters []string
		gates    []float64
		want     string
	}{
		{[]string{"dflash"}, []float64{0.2, 1}, "--draft-confidence 1: use 0"},
		{[]string{"dflash"}, []float64{-0.5}, "--draft-confidence -0.5"},
		{[]string{"lookup"}, []float64{0.2}, "add --drafter dflash"},
	} {
		err := CompareSpec(t.Context(), SpecCompareOptions{Target: "no-such-model", Prompts: []string{"x"}, Drafters: tc.drafters, DraftConfidences: tc.gates}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("drafters %v, confidences %v: %v; want %q", tc.drafters, tc.gates, err, tc.want)
		}
	}
}

func TestDefaultBlocks(t *testing.T) {
	for trained, want := range map[int]string{2: "[2]", 4: "[4]", 8: "[4 8]", 12: "[4 8]", 16: "[4 8 16]", 32: "[4 8 16]"} {
		if got := fmt.Sprint(defaultBlocks(trained)); got != want {
			t.Errorf("defaultBlocks(%d) = %s; want %s", trained, got, want)
		}
	}
}
