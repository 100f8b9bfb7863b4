package results

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"gonum.org/v1/gonum/stat"
	"gonum.org/v1/gonum/stat/distuv"

	"github.com/hippo-bench/hippo/bench"
)

// Confidence is the coverage of the intervals this package reports.
const Confidence = 0.95

// Estimate summarises one per-run quantity (decode tok/s, TTFT, acceptance rate) over the measured
// runs of a configuration. Fields that cannot be computed from N samples are NaN: Stddev and the
// interval need N >= 2.
type Estimate struct {
	N      int     `json:"n"`
	Mean   float64 `json:"mean"`
	Stddev float64 `json:"stddev"`
	// CILow and CIHigh bound the 95% confidence interval of the mean, from Student's t distribution
	// with N-1 degrees of freedom.
	CILow  float64 `json:"ci_low"`
	CIHigh float64 `json:"ci_high"`
	Median float64 `json:"median"`
}

// HalfWidth is half the width of the confidence interval (NaN when N < 2).
func (e Estimate) HalfWidth() float64 { return (e.CIHigh - e.CILow) / 2 }

// Describe estimates the mean of xs with a 95% confidence interval. NaN and infinite values are
// dropped first.
func Describe(xs []float64) Estimate {
	xs = finite(xs)
	e := Estimate{N: len(xs), Mean: math.NaN(), Stddev: math.NaN(), CILow: math.NaN(), CIHigh: math.NaN(), Median: math.NaN()}
	if len(xs) == 0 {
		return e
	}
	e.Mean = stat.Mean(xs, nil)
	e.Median = bench.Median(xs)
	if len(xs) < 2 {
		return e
	}
	e.Stddev = stat.StdDev(xs, nil)
	t := distuv.StudentsT{Mu: 0, Sigma: 1, Nu: float64(len(xs) - 1)}.Quantile(1 - (1-Confidence)/2)
	h := t * e.Stddev / math.Sqrt(float64(len(xs)))
	e.CILow, e.CIHigh = e.Mean-h, e.Mean+h
	return e
}

// Distribution summarises per-step latencies (milliseconds) pooled over the measured runs of a
// configuration. P90 and P99 are empirical quantiles (the smallest sample with at least that
// fraction of samples at or below it); Median is the middle sample, or the mean of the two middle
// samples. N == 0 means the configuration never measured this quantity.
type Distribution struct {
	N      int     `json:"n"`
	Mean   float64 `json:"mean"`
	Median float64 `json:"median"`
	P90    float64 `json:"p90"`
	P99    float64 `json:"p99"`
	Max    float64 `json:"max"`
}

// Distribute summarises xs (NaN and infinite values dropped).
func Distribute(xs []float64) Distribution {
	xs = finite(xs)
	if len(xs) == 0 {
		nan := math.NaN()
		return Distribution{Mean: nan, Median: nan, P90: nan, P99: nan, Max: nan}
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	return Distribution{
		N:      len(s),
		Mean:   stat.Mean(s, nil),
		Median: bench.Median(s),
		P90:    stat.Quantile(0.90, stat.Empirical, s, nil),
		P99:    stat.Quantile(0.99, stat.Empirical, s, nil),
		Max:    s[len(s)-1],
	}
}

func finite(xs []float64) []float64 {
	out := xs[:0:0]
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			out = append(out, x)
		}
	}
	return out
}

// Summary is the statistics of one configuration over its measured (non-warm-up) runs. A
// configuration is a run configuration without its prompt: the prompts of a sweep are samples of
// one workload.
type Summary struct {
	// Key is ConfigKey(Config); Label names the configuration by what varies across the sweep.
	Key    string       `json:"key"`
	Label  string       `json:"label"`
	Config bench.Config `json:"config"`
	// Prompts is how many distinct prompts the runs used; Failed counts runs whose latest attempt
	// failed (they are excluded from every statistic).
	Prompts int `json:"prompts"`
	Failed  int `json:"failed"`

	DecodeTokS  Estimate `json:"decode_tok_s"`
	PrefillTokS Estimate `json:"prefill_tok_s"`
	TTFTMS      Estimate `json:"ttft_ms"`

	// Per-step latencies in milliseconds. Step is the whole step (forward + network + sample +
	// draft); StageForward has one entry per pipeline stage when the engine reported them.
	Step         Distribution   `json:"step_ms"`
	Forward      Distribution   `json:"forward_ms"`
	Network      Distribution   `json:"network_ms"`
	Sample       Distribution   `json:"sample_ms"`
	Draft        Distribution   `json:"draft_ms"`
	StageForward []Distribution `json:"stage_forward_ms,omitempty"`
	// HopNetwork has one entry per hop (stage k to k+1 and back) when the transport reported
	// them (the project's TCP framing does, mlx-ring does not).
	HopNetwork []Distribution `json:"hop_network_ms,omitempty"`
	// NetworkShare is total network time over total step time (NaN without steps).
	NetworkShare float64 `json:"network_share"`
	// TokensPerStep is emitted tokens per decode step (1 without speculation).
	TokensPerStep float64 `json:"tokens_per_step"`

	// Acceptance is the per-run draft acceptance rate (accepted / drafted); nil when no run drafted.
	// Drafted and Accepted are totals over all runs.
	Acceptance *Estimate `json:"acceptance,omitempty"`
	Drafted    int       `json:"drafted,omitempty"`
	Accepted   int       `json:"accepted,omitempty"`
	// AcceptByPosition is the mean over runs of the acceptance rate at each draft position
	// (position i is kept only when positions before it were); nil when no run drafted.
	AcceptByPosition []float64 `json:"accept_by_position,omitempty"`
	// DraftingSteps counts the speculative steps that proposed at least one draft: all of them
	// but lookup's steps without a match, which emit the target's one token.
	DraftingSteps int `json:"drafting_steps,omitempty"`

	// steps keeps the pooled step totals for CDF plots.
	steps     []float64
	networkMS []float64
}

// Measured returns the records that count for statistics: the latest attempt of every measured
// (non-warm-up) run id, successful or not.
func Measured(recs []Record) []Record {
	var out []Record
	for _, r := range Latest(recs) {
		if !r.Warmup {
			out = append(out, r)
		}
	}
	return out
}

// Summarize computes per-configuration statistics from raw records (warm-ups excluded, repeated
// attempts of one id resolved by Latest). Summaries follow the order in which configurations first
// appear, and are labelled by what varies between them.
func Summarize(recs []Record) []Summary {
	type group struct {
		s       *Summary
		recs    []Record
		prompts map[string]bool
	}
	var order []*group
	byKey := map[string]*group{}
	for _, r := range Measured(recs) {
		c := r.Config
		c.Prompt = ""
		k := ConfigKey(c)
		g := byKey[k]
		if g == nil {
			g = &group{s: &Summary{Key: k, Config: c}, prompts: map[string]bool{}}
			byKey[k] = g
			order = append(order, g)
		}
		g.prompts[r.Config.Prompt] = true
		if !r.OK() {
			g.s.Failed++
			continue
		}
		g.recs = append(g.recs, r)
	}
	out := make([]Summary, 0, len(order))
	configs := make([]bench.Config, 0, len(order))
	for _, g := range order {
		g.s.Prompts = len(g.prompts)
		summarizeRuns(g.s, g.recs)
		out = append(out, *g.s)
		configs = append(configs, g.s.Config)
	}
	for i, l := range Labels(configs) {
		out[i].Label = l
	}
	return out
}

func summarizeRuns(s *Summary, recs []Record) {
	var decode, prefill, ttft, acc []float64
	var byPos [][]float64
	var fwd, net, smp, drf, total []float64
	var stages, hops [][]float64
	var netSum, totalSum float64
	var tokens, steps int
	anyNet, anyDraft := false, false
	for _, r := range recs {
		res := r.Result
		decode = append(decode, res.DecodeTokS)
		prefill = append(prefill, res.PrefillTokS)
		ttft = append(ttft, res.TTFTMS)
		if a := res.Acceptance; a != nil {
			s.Drafted += a.Drafted
			s.Accepted += a.Accepted
			s.DraftingSteps += a.DraftingSteps(len(res.Steps))
			rate := a.Rate
			if a.Drafted > 0 {
				rate = float64(a.Accepted) / float64(a.Drafted)
			}
			acc = append(acc, rate)
			for i, v := range a.ByPosition {
				for len(byPos) <= i {
					byPos = append(byPos, nil)
				}
				byPos[i] = append(byPos[i], v)
			}
		}
		for _, st := range res.Steps {
			t := st.ForwardMS + st.NetworkMS + st.SampleMS + st.DraftMS
			fwd = append(fwd, st.ForwardMS)
			net = append(net, st.NetworkMS)
			smp = append(smp, st.SampleMS)
			drf = append(drf, st.DraftMS)
			total = append(total, t)
			anyNet = anyNet || st.NetworkMS > 0
			anyDraft = anyDraft || st.DraftMS > 0
			netSum += st.NetworkMS
			totalSum += t
			tokens += st.Tokens
			steps++
			for i, v := range st.StageForwardMS {
				for len(stages) <= i {
					stages = append(stages, nil)
				}
				stages[i] = append(stages[i], v)
			}
			for i, v := range st.HopNetworkMS {
				for len(hops) <= i {
					hops = append(hops, nil)
				}
				hops[i] = append(hops[i], v)
			}
		}
	}
	s.DecodeTokS = Describe(decode)
	s.PrefillTokS = Describe(prefill)
	s.TTFTMS = Describe(ttft)
	s.Step = Distribute(total)
	s.Forward = Distribute(fwd)
	s.Sample = Distribute(smp)
	s.Network = Distribute(nil)
	if anyNet {
		s.Network = Distribute(net)
		s.networkMS = net
	}
	s.Draft = Distribute(nil)
	if anyDraft {
		s.Draft = Distribute(drf)
	}
	for _, st := range stages {
		s.StageForward = append(s.StageForward, Distribute(st))
	}
	for _, h := range hops {
		s.HopNetwork = append(s.HopNetwork, Distribute(h))
	}
	s.NetworkShare = math.NaN()
	if totalSum > 0 {
		s.NetworkShare = netSum / totalSum
	}
	s.TokensPerStep = math.NaN()
	if steps > 0 {
		s.TokensPerStep = float64(tokens) / float64(steps)
	}
	if len(acc) > 0 {
		e := Describe(acc)
		s.Acceptance = &e
	}
	for _, xs := range byPos {
		var sum float64
		for _, x := range xs {
			sum += x
		}
		s.AcceptByPosition = append(s.AcceptByPosition, sum/float64(len(xs)))
	}
	s.steps = total
}

// labelOrder is the order in which varying fields appear in labels; fields not listed follow in
// alphabetical order.
var labelOrder = []string{"model", "mode", "stages", "split", "transport", "link", "drafter", "draft", "draft_tokens", "draft_confidence", "dtype", "max_tokens", "temperature", "top_p", "seed"}

// Labels names each configuration by the fields that differ between them ("pipeline link=wifi").
// The model (base name of a checkpoint path) and the mode are written bare; a field a configuration
// does not set is left out of its label unless that is the only difference ("draft_tokens=-").
// When nothing differs, the label is the mode.
func Labels(configs []bench.Config) []string {
	maps := make([]map[string]any, len(configs))
	keys := map[string]bool{}
	for i, c := range configs {
		maps[i] = configMap(c)
		for k := range maps[i] {
			keys[k] = true
		}
	}
	var differ, present []string // keys with two distinct set values; keys set in only some
	for k := range keys {
		vals := map[string]bool{}
		missing := false
		for _, m := range maps {
			if v, ok := m[k]; ok {
				vals[fmt.Sprint(v)] = true
			} else {
				missing = true
			}
		}
		if len(vals) > 1 {
			differ = append(differ, k)
		} else if missing {
			present = append(present, k)
		}
	}
	sortKeys(differ)
	out := labelWith(configs, maps, differ, false)
	if hasDuplicates(out) {
		out = labelWith(configs, maps, sortKeys(append(differ, present...)), true)
	}
	return out
}

func labelWith(configs []bench.Config, maps []map[string]any, keys []string, dashes bool) []string {
	out := make([]string, len(configs))
	for i, c := range configs {
		var parts []string
		for _, k := range keys {
			v, ok := maps[i][k]
			switch {
			case k == "model":
				parts = append(parts, modelName(c.Model))
			case k == "mode":
				parts = append(parts, modeName(c.Mode))
			case !ok && dashes:
				parts = append(parts, k+"=-")
			case ok:
				parts = append(parts, fmt.Sprintf("%s=%v", k, v))
			}
		}
		if len(parts) == 0 {
			parts = append(parts, modeName(c.Mode))
		}
		out[i] = strings.Join(parts, " ")
	}
	return out
}

func sortKeys(keys []string) []string {
	rank := func(k string) int {
		if i := slices.Index(labelOrder, k); i >= 0 {
			return i
		}
		return len(labelOrder)
	}
	sort.Slice(keys, func(i, j int) bool {
		ri, rj := rank(keys[i]), rank(keys[j])
		if ri != rj {
			return ri < rj
		}
		return keys[i] < keys[j]
	})
	return keys
}

func hasDuplicates(xs []string) bool {
	seen := map[string]bool{}
	for _, x := range xs {
		if seen[x] {
			return true
		}
		seen[x] = true
	}
	return false
}

func configMap(c bench.Config) map[string]any {
	c.Prompt = ""
	b, _ := json.Marshal(c)
	m := map[string]any{}
	_ = json.Unmarshal(b, &m)
	delete(m, "prompt")
	for k, v := range m {
		if v == "" || v == false || v == 0.0 {
			delete(m, k)
		}
	}
	return m
}

func modelName(m string) string {
	if strings.Contains(m, string(filepath.Separator)) {
		return filepath.Base(filepath.Clean(m))
	}
	return m
}

func modeName(m string) string {
	if m == "" {
		return "standalone"
	}
	return m
}

// TTest is the outcome of Welch's unequal-variances t-test.
type TTest struct {
	T  float64 `json:"t"`
	DF float64 `json:"df"`
	// P is the two-sided p-value (NaN when either sample has fewer than 2 values).
	P float64 `json:"p"`
}

// WelchTTest tests whether the means of a and b differ, without assuming equal variances. The
// degrees of freedom come from the Welch-Satterthwaite equation.
func WelchTTest(a, b []float64) TTest {
	a, b = finite(a), finite(b)
	nan := math.NaN()
	if len(a) < 2 || len(b) < 2 {
		return TTest{T: nan, DF: nan, P: nan}
	}
	ma, mb := stat.Mean(a, nil), stat.Mean(b, nil)
	va, vb := stat.Variance(a, nil)/float64(len(a)), stat.Variance(b, nil)/float64(len(b))
	se2 := va + vb
	if se2 == 0 {
		if ma == mb {
			return TTest{T: 0, DF: nan, P: 1}
		}
		return TTest{T: math.Copysign(math.Inf(1), mb-ma), DF: nan, P: 0}
	}
	t := (mb - ma) / math.Sqrt(se2)
	df := se2 * se2 / (va*va/float64(len(a)-1) + vb*vb/float64(len(b)-1))
	p := 2 * distuv.StudentsT{Mu: 0, Sigma: 1, Nu: df}.Survival(math.Abs(t))
	return TTest{T: t, DF: df, P: p}
}

// Comparison is one configuration measured in two result sets A and B.
type Comparison struct {
	Key    string       `json:"key"`
	Label  string       `json:"label"`
	Config bench.Config `json:"config"`
	// A and B are decode tok/s; Ratio is B.Mean / A.Mean.
	A     Estimate `json:"a"`
	B     Estimate `json:"b"`
	Ratio float64  `json:"ratio"`
	Test  TTest    `json:"test"`
}

// Compare matches the configurations of two result sets by ConfigKey and compares their decode
// tok/s with Welch's t-test. Configurations present in only one set get NaN for the missing side.
func Compare(a, b []Record) []Comparison {
	type side struct {
		c    bench.Config
		a, b []float64
	}
	var order []string
	m := map[string]*side{}
	add := func(recs []Record, isB bool) {
		for _, r := range Measured(recs) {
			c := r.Config
			c.Prompt = ""
			k := ConfigKey(c)
			s := m[k]
			if s == nil {
				s = &side{c: c}
				m[k] = s
				order = append(order, k)
			}
			if !r.OK() {
				continue
			}
			if isB {
				s.b = append(s.b, r.Result.DecodeTokS)
			} else {
				s.a = append(s.a, r.Result.DecodeTokS)
			}
		}
	}
	add(a, false)
	add(b, true)
	configs := make([]bench.Config, len(order))
	for i, k := range order {
		configs[i] = m[k].c
	}
	labels := Labels(configs)
	out := make([]Comparison, len(order))
	for i, k := range order {
		s := m[k]
		c := Comparison{Key: k, Label: labels[i], Config: s.c, A: Describe(s.a), B: Describe(s.b), Test: WelchTTest(s.a, s.b)}
		c.Ratio = c.B.Mean / c.A.Mean
		out[i] = c
	}
	return out
}
