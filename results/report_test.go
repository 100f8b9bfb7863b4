package results

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/bench"
)

// syntheticRuns writes a runs.jsonl covering every plot: standalone, pipeline over two links,
// spec with K = 1..4 and pipeline+spec, plus warm-ups, a failure and a torn last line.
func syntheticRuns(t *testing.T, dir string, withSpec bool) {
	t.Helper()
	s, err := OpenStore(filepath.Join(dir, RunsFile))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	env := Env{Host: "mac-a", OS: "darwin", Arch: "arm64", CPU: "Apple M4", CPUs: 10, RAMBytes: 16 << 30, GoVersion: "go1.26", MLXVersion: "0.32.4", GitCommit: "abc123"}
	add := func(c bench.Config, repeat int, warmup bool) {
		c.Prompt = "p"
		c.MaxTokens = 16
		r := Record{ID: RecordID(c, repeat, warmup), Sweep: "synthetic", Config: c, Repeat: repeat, Warmup: warmup, Env: env,
			Started: time.Date(2025, 1, 1, 0, 0, repeat, 0, time.UTC), ElapsedMS: 900}
		if c.Link != "" {
			r.Env.Link = map[string]any{"rtt_ms": map[string]float64{"thunderbolt": 0.6, "wifi": 8}[c.Link], "source": "exo issue #2295"}
		}
		res := &bench.Result{Mode: c.Mode, Model: c.Model, TTFTMS: 40 + rng.Float64()}
		spec := c.DraftTokens > 0
		var acc bench.Acceptance
		total, tokens := 0.0, 0
		for range 16 {
			st := bench.Step{ForwardMS: 20 + rng.Float64(), SampleMS: 0.3, Tokens: 1}
			if c.Stages > 1 {
				st.StageForwardMS = []float64{st.ForwardMS / 2, st.ForwardMS / 2}
				st.NetworkMS = map[string]float64{"thunderbolt": 0.6, "wifi": 8}[c.Link] * (1 + rng.ExpFloat64())
			}
			if spec {
				st.DraftMS = 0.2 * float64(c.DraftTokens)
				st.Accepted = rng.IntN(c.DraftTokens + 1)
				st.Tokens += st.Accepted
				acc.Drafted += c.DraftTokens
				acc.Accepted += st.Accepted
			}
			total += st.ForwardMS + st.NetworkMS + st.SampleMS + st.DraftMS
			tokens += st.Tokens
			res.Steps = append(res.Steps, st)
		}
		res.DecodeTokS = float64(tokens) / total * 1000
		if spec {
			acc.Rate = float64(acc.Accepted) / float64(acc.Drafted)
			for i := range c.DraftTokens {
				acc.ByPosition = append(acc.ByPosition, acc.Rate/float64(i+1))
			}
			res.Acceptance = &acc
		}
		r.Result = res
		if err := s.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	configs := []bench.Config{
		{Model: "synth:qwen3-0.6b", Mode: "standalone"},
		{Model: "synth:qwen3-0.6b", Mode: "pipeline", Stages: 2, Link: "thunderbolt"},
		{Model: "synth:qwen3-0.6b", Mode: "pipeline", Stages: 2, Link: "wifi"},
	}
	if withSpec {
		for k := 1; k <= 4; k++ {
			configs = append(configs, bench.Config{Model: "synth:qwen3-0.6b", Mode: "spec", Drafter: "lookup", DraftTokens: k})
		}
		configs = append(configs, bench.Config{Model: "synth:qwen3-0.6b", Mode: "pipeline+spec", Stages: 2, Link: "wifi", Drafter: "lookup", DraftTokens: 2})
	}
	for _, c := range configs {
		add(c, 0, true)
		for r := range 4 {
			add(c, r, false)
		}
	}
	fail := configs[0]
	fail.Prompt, fail.MaxTokens = "p", 16
	if err := s.Append(Record{ID: RecordID(fail, 9, false), Sweep: "synthetic", Config: fail, Repeat: 9, Env: env, Error: "out of memory"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	f, _ := os.OpenFile(filepath.Join(dir, RunsFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"id":"torn","config":{"mo`)
	f.Close()
}

func TestBuildEverything(t *testing.T) {
	dir := t.TempDir()
	syntheticRuns(t, dir, true)
	b, err := Build(dir, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Plots.Skipped) != 0 {
		t.Errorf("skipped plots %+v; want none", b.Plots.Skipped)
	}
	for _, name := range []string{PlotTokS, PlotBreakdown, PlotCDF, PlotSpeedup, PlotModes, PlotAccept} {
		checkPNG(t, filepath.Join(dir, name+".png"))
		checkSVG(t, filepath.Join(dir, name+".svg"))
	}
	report := readFile(t, filepath.Join(dir, ReportFile))
	for _, want := range []string{
		"# Sweep `synthetic`", "Apple M4", "0.32.4", "abc123", "exo issue #2295",
		"![Decode throughput per configuration](tok-s.png)", "(latency-cdf.svg)", "(speedup-vs-draft.png)",
		"## Speculative decoding", "## Best configuration per mode", "out of memory", "8 warm-up runs",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report.md lacks %q", want)
		}
	}

	rows, err := csv.NewReader(strings.NewReader(readFile(t, filepath.Join(dir, SummaryFile)))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1+len(b.Summaries) || len(b.Summaries) != 8 {
		t.Errorf("summary.csv has %d rows for %d summaries; want a header and 8 rows", len(rows), len(b.Summaries))
	}
	if rows[1][1] != "standalone" || rows[1][14] != "4" || rows[1][15] != "1" {
		t.Errorf("first row label=%q n=%q failed=%q; want standalone, 4, 1", rows[1][1], rows[1][14], rows[1][15])
	}
}

// specRuns writes two runs of each configuration with exact, noise-free numbers: standalone
// steps of 10 ms at 100 tok/s; a DFlash drafter whose draft costs 2 + 0.1K ms a step; a draft
// model costing 0.5 ms a drafted token; verify forwards of 15 ms; and acceptance by position
// a^i, as when the target keeps each draft with probability a (0.5 for dflash, 0.8 for the model,
// 0.6 for lookup, which drafts nothing at half its steps).
func specRuns(t *testing.T, dir string) {
	t.Helper()
	s, err := OpenStore(filepath.Join(dir, RunsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	add := func(c bench.Config, tokS, draftMS, a float64, idle int) { addSpecRun(t, s, c, tokS, draftMS, a, idle) }
	add(bench.Config{Mode: "standalone"}, 100, 0, 0, 0)
	for _, k := range []int{3, 7, 15} {
		add(bench.Config{Mode: "spec", Drafter: "dflash", Draft: "engines/spec/testdata/dflash-smollm2", DraftTokens: k}, 60+float64(k), 2+0.1*float64(k), 0.5, 0)
	}
	for _, k := range []int{2, 4} {
		add(bench.Config{Mode: "spec", Drafter: "model", Draft: "models/smollm2-draft", DraftTokens: k}, 120, 0.5*float64(k), 0.8, 0)
	}
	add(bench.Config{Mode: "spec", Drafter: "lookup", DraftTokens: 3}, 105, 0, 0.6, 4)
}

// addSpecRun stores two repeats of c: 8 steps each at tokS decode tok/s; a speculative c drafts
// draftMS a step, keeps one draft a step (none at its first idle steps, which draft nothing),
// with acceptance a^i at position i.
func addSpecRun(t *testing.T, s *Store, c bench.Config, tokS, draftMS, a float64, idle int) {
	t.Helper()
	c.Model, c.Prompt, c.MaxTokens = "models/smollm2-135m-dense", "p", 32
	for r := range 2 {
		res := &bench.Result{Mode: c.Mode, Model: c.Model, DecodeTokS: tokS}
		for i := range 8 {
			st := bench.Step{ForwardMS: 8, SampleMS: 2, Tokens: 1}
			if c.DraftTokens > 0 {
				st = bench.Step{ForwardMS: 15, DraftMS: draftMS, Tokens: 2, Accepted: 1}
				if i < idle {
					st = bench.Step{ForwardMS: 15, DraftMS: draftMS, Tokens: 1}
				}
			}
			res.Steps = append(res.Steps, st)
		}
		if c.DraftTokens > 0 {
			acc := &bench.Acceptance{Drafted: (8 - idle) * c.DraftTokens, Accepted: 8 - idle, NoDraftSteps: idle}
			for i := 1; i <= c.DraftTokens; i++ {
				acc.ByPosition = append(acc.ByPosition, math.Pow(a, float64(i)))
			}
			res.Acceptance = acc
		}
		if err := s.Append(Record{ID: RecordID(c, r, false), Sweep: "spec-real", Config: c, Repeat: r, Result: res}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGatedSeriesHasNoAnalytic: drafts cut by the drafter's confidence vary in length, so their
// series is named by its confidence, beside the whole-block one, and the report gives it no
// analytic speedup or expected tokens, which assume K drafts a step.
func TestGatedSeriesHasNoAnalytic(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(filepath.Join(dir, RunsFile))
	if err != nil {
		t.Fatal(err)
	}
	addSpecRun(t, s, bench.Config{Mode: "standalone"}, 100, 0, 0, 0)
	dflash := bench.Config{Mode: "spec", Drafter: "dflash", Draft: "engines/spec/testdata/dflash-smollm2", DraftTokens: 7}
	addSpecRun(t, s, dflash, 90, 2, 0.5, 0)
	dflash.DraftConfidence = 0.3
	addSpecRun(t, s, dflash, 100, 2, 0.5, 0)
	s.Close()
	b, err := Build(dir, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	series := Speedups(b.Summaries)
	if len(series) != 2 || series[0].Confidence != 0 || series[1].Confidence != 0.3 || !strings.Contains(series[1].Name, "confidence=0.3") || strings.Contains(series[0].Name, "confidence") {
		t.Fatalf("series %+v; want whole blocks, then confidence=0.3", series)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, l := range strings.Split(string(md), "\n") {
		if strings.HasPrefix(l, "| spec drafter=dflash (") {
			rows = append(rows, l)
		}
	}
	if len(rows) != 2 || strings.HasSuffix(rows[0], "| – |") || !strings.HasSuffix(rows[1], "| 1.00 | – |") || !strings.Contains(rows[1], "(–)") {
		t.Errorf("report rows %q; want an analytic value for whole blocks and – for the cut drafts", rows)
	}
}

// TestSpeedups checks the speculative analysis on constructed results: every drafter (a model
// drafter too) is a series paired with its baseline; a is recovered from the acceptance by
// position; the draft cost fit separates a block drafter's fixed cost from a draft model's cost
// per token, both relative to a whole baseline step; a drafter that drafts at only some steps
// (lookup) has a from its drafting steps and its expected tokens scaled by their share; and the
// report and both plots show them.
func TestSpeedups(t *testing.T) {
	dir := t.TempDir()
	specRuns(t, dir)
	b, err := Build(dir, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := Speedups(b.Summaries)
	type want struct {
		name                              string
		k                                 []int
		speedup                           []float64
		alpha, drafting, c0, c, ver, tpss float64
	}
	wants := []want{
		{"spec drafter=dflash (dflash-smollm2)", []int{3, 7, 15}, []float64{0.63, 0.67, 0.75}, 0.5, 1, 0.2, 0.01, 1.5, 2},
		{"spec drafter=model (smollm2-draft)", []int{2, 4}, []float64{1.2, 1.2}, 0.8, 1, 0, 0.05, 1.5, 2},
		{"spec drafter=lookup", []int{3}, []float64{1.05}, 0.6, 0.5, 0, 0, 1.5, 1.5},
	}
	if len(got) != len(wants) {
		t.Fatalf("Speedups gave %d series %+v; want %d", len(got), got, len(wants))
	}
	near := func(x, y float64) bool { return math.Abs(x-y) < 1e-9 }
	for i, w := range wants {
		g := got[i]
		if g.Name != w.name || fmt.Sprint(g.K) != fmt.Sprint(w.k) {
			t.Errorf("series %d = %q at K %v; want %q at K %v", i, g.Name, g.K, w.name, w.k)
			continue
		}
		for j := range w.k {
			if !near(g.Speedup[j], w.speedup[j]) || !near(g.Verify[j], w.ver) || !near(g.TokensPerStep[j], w.tpss) {
				t.Errorf("%s K=%d: speedup %v, verify %v, tokens/step %v; want %v, %v, %v", w.name, w.k[j], g.Speedup[j], g.Verify[j], g.TokensPerStep[j], w.speedup[j], w.ver, w.tpss)
			}
		}
		if !near(g.Alpha, w.alpha) || !near(g.Drafting, w.drafting) || !near(g.DraftFixed, w.c0) || !near(g.CostRatio, w.c) {
			t.Errorf("%s: a = %v, drafting at %v of steps, draft cost %v + %vK; want %v, %v, %v + %vK", w.name, g.Alpha, g.Drafting, g.DraftFixed, g.CostRatio, w.alpha, w.drafting, w.c0, w.c)
		}
	}
	report := readFile(t, filepath.Join(dir, ReportFile))
	an := Analytic(0.5, 1, 0.2, 0.01, 7)
	for _, w := range []string{
		"| spec drafter=model (smollm2-draft) | 0.800 | 0.000 + 0.0500K | 4 | 2.00 (3.36) | 1.50 | 1.20 |",
		fmt.Sprintf("| spec drafter=dflash (dflash-smollm2) | 0.500 | 0.200 + 0.0100K | 7 | 2.00 (%.2f) | 1.50 | 0.67 | %.2f |", bench.ExpectedTokens(0.5, 7), an),
		// half its steps draft: 1 + 0.5 (1 + 0.6 + 0.36 + 0.216 - 1) tokens a step
		"| spec drafter=lookup | 0.600 | 0.000 + 0.0000K | 3 | 1.50 (1.59) | 1.50 | 1.05 | 1.59 |",
	} {
		if !strings.Contains(report, w) {
			t.Errorf("report.md lacks the row\n%s\nin:\n%s", w, report)
		}
	}
	for _, name := range []string{PlotSpeedup, PlotAccept} {
		checkPNG(t, filepath.Join(dir, name+".png"))
	}
}

func TestBuildSkipsPlotsWithoutData(t *testing.T) {
	dir := t.TempDir()
	syntheticRuns(t, dir, false)
	// A stale plot from an earlier build must not survive beside a report that skips it.
	os.WriteFile(filepath.Join(dir, PlotSpeedup+".png"), []byte("stale"), 0o644)
	out := filepath.Join(dir, "rebuilt")
	b, err := Build(dir, BuildOptions{Out: out})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Plots.Skipped) != 2 || b.Plots.Skipped[0].Name != PlotSpeedup || b.Plots.Skipped[1].Name != PlotAccept {
		t.Errorf("skipped %+v; want only %s and %s", b.Plots.Skipped, PlotSpeedup, PlotAccept)
	}
	if _, err := os.Stat(filepath.Join(out, PlotSpeedup+".png")); err == nil {
		t.Errorf("%s.png written without speculative runs", PlotSpeedup)
	}
	report := readFile(t, filepath.Join(out, ReportFile))
	if !strings.Contains(report, "`speedup-vs-draft`: no speculative runs") {
		t.Errorf("report.md does not say why the speedup plot was skipped:\n%s", report)
	}

	// Plots only, standalone only: nothing but throughput and the step breakdown.
	only := t.TempDir()
	s, _ := OpenStore(filepath.Join(only, RunsFile))
	c := bench.Config{Model: "m", Mode: "standalone", Prompt: "p"}
	s.Append(Record{ID: RecordID(c, 0, false), Config: c, Result: &bench.Result{DecodeTokS: 5, Steps: []bench.Step{{ForwardMS: 3, Tokens: 1}}}})
	s.Close()
	b, err = Build(only, BuildOptions{PlotsOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var skipped []string
	for _, sk := range b.Plots.Skipped {
		skipped = append(skipped, sk.Name)
	}
	if strings.Join(skipped, ",") != "latency-cdf,speedup-vs-draft,modes,acceptance-by-position" {
		t.Errorf("skipped %v; want latency-cdf, speedup-vs-draft, modes, acceptance-by-position", skipped)
	}
	if _, err := os.Stat(filepath.Join(only, ReportFile)); err == nil {
		t.Error("PlotsOnly wrote report.md")
	}
	checkPNG(t, filepath.Join(only, PlotTokS+".png"))
}

func TestBuildEmpty(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, RunsFile), nil, 0o644)
	b, err := Build(dir, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Plots.Figures) != 0 || len(b.Plots.Skipped) != 6 {
		t.Errorf("empty runs: %d figures, %d skipped; want 0 and 6", len(b.Plots.Figures), len(b.Plots.Skipped))
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
		return
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Errorf("decode %s: %v", path, err)
		return
	}
	if b := img.Bounds(); len(data) < 5000 || b.Dx() < 400 || b.Dy() < 200 {
		t.Errorf("%s: %d bytes, %dx%d; want a real plot", path, len(data), b.Dx(), b.Dy())
	}
}

func checkSVG(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
		return
	}
	if len(data) < 2000 || !bytes.Contains(data, []byte("<svg")) {
		t.Errorf("%s: %d bytes; want an SVG document", path, len(data))
	}
}
