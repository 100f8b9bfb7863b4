package results

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"gonum.org/v1/gonum/floats"
	"gonum.org/v1/gonum/stat"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/hippo-bench/hippo/bench"
)

// Figure is one plot written as PNG and SVG.
type Figure struct {
	// Name is the file stem ("tok-s"); Files are the written files relative to the output
	// directory, PNG first.
	Name    string   `json:"name"`
	Title   string   `json:"title"`
	Files   []string `json:"files"`
	Caption string   `json:"caption"`
}

// Skip names a plot that was not drawn because the data for it does not exist.
type Skip struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Plots lists what WritePlots drew and what it skipped.
type Plots struct {
	Figures []Figure `json:"figures"`
	Skipped []Skip   `json:"skipped"`
}

// Plot stems, in the order WritePlots considers them.
const (
	PlotTokS      = "tok-s"
	PlotBreakdown = "step-breakdown"
	PlotCDF       = "latency-cdf"
	PlotSpeedup   = "speedup-vs-draft"
	PlotModes     = "modes"
	PlotAccept    = "acceptance-by-position"
)

// WritePlots draws every plot for which sums has data into dir, each as <name>.png and <name>.svg:
// decode tok/s per configuration with 95% CIs, the per-step latency breakdown, step-latency CDFs
// per link, speedup against draft length with Leviathan et al.'s analytic curve, and the best
// configuration of each mode side by side. sums must come from Summarize (it carries the pooled
// step samples the CDFs need).
func WritePlots(dir string, sums []Summary) (Plots, error) {
	var out Plots
	type maker struct {
		name string
		fn   func([]Summary) (*plot.Plot, vg.Length, string, string)
	}
	makers := []maker{
		{PlotTokS, plotTokS},
		{PlotBreakdown, plotBreakdown},
		{PlotCDF, plotCDF},
		{PlotSpeedup, plotSpeedup},
		{PlotModes, plotModes},
		{PlotAccept, plotAcceptByPosition},
	}
	for _, m := range makers {
		p, h, caption, skip := m.fn(sums)
		if p == nil {
			out.Skipped = append(out.Skipped, Skip{Name: m.name, Reason: skip})
			continue
		}
		f := Figure{Name: m.name, Title: p.Title.Text, Caption: caption}
		for _, ext := range []string{"png", "svg"} {
			file := m.name + "." + ext
			if err := p.Save(8*vg.Inch, h, filepath.Join(dir, file)); err != nil {
				return out, fmt.Errorf("plot %s: %w", file, err)
			}
			f.Files = append(f.Files, file)
		}
		out.Figures = append(out.Figures, f)
	}
	return out, nil
}

// RemovePlots deletes plot files of every known stem from dir, so a rebuild never leaves a stale
// plot beside a report that says it was skipped.
func RemovePlots(dir string) error {
	for _, n := range []string{PlotTokS, PlotBreakdown, PlotCDF, PlotSpeedup, PlotModes, PlotAccept} {
		for _, ext := range []string{"png", "svg"} {
			if err := os.Remove(filepath.Join(dir, n+"."+ext)); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return nil
}

func withDecode(sums []Summary) []Summary {
	var out []Summary
	for _, s := range sums {
		if s.DecodeTokS.N > 0 {
			out = append(out, s)
		}
	}
	return out
}

// barHeight sizes a horizontal bar plot for n bars.
func barHeight(n int) vg.Length {
	return max(3*vg.Inch, vg.Length(n)*0.35*vg.Inch+1.5*vg.Inch)
}

func reversed(ss []Summary) []Summary {
	out := slices.Clone(ss)
	slices.Reverse(out)
	return out
}

func nz(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	return x
}

// xErrs are horizontal error bars at (value, row).
type xErrs struct {
	plotter.XYs
	plotter.XErrors
}

// yErrs are vertical error bars at (column, value).
type yErrs struct {
	plotter.XYs
	plotter.YErrors
}

func plotTokS(sums []Summary) (*plot.Plot, vg.Length, string, string) {
	ss := withDecode(sums)
	if len(ss) == 0 {
		return nil, 0, "", "no successful measured runs"
	}
	p := plot.New()
	p.Title.Text = "Decode throughput per configuration"
	p.X.Label.Text = "decode tok/s (mean, 95% CI)"
	ss = reversed(ss) // horizontal bars stack upwards: keep the sweep's first configuration on top
	vals := make(plotter.Values, len(ss))
	errs := xErrs{XYs: make(plotter.XYs, len(ss)), XErrors: make(plotter.XErrors, len(ss))}
	names := make([]string, len(ss))
	for i, s := range ss {
		vals[i] = nz(s.DecodeTokS.Mean)
		names[i] = s.Label
		errs.XYs[i] = plotter.XY{X: vals[i], Y: float64(i)}
		if h := s.DecodeTokS.HalfWidth(); !math.IsNaN(h) {
			errs.XErrors[i] = struct{ Low, High float64 }{h, h}
		}
	}
	bars, err := plotter.NewBarChart(vals, 0.6*vg.Centimeter)
	if err != nil {
		return nil, 0, "", err.Error()
	}
	bars.Horizontal = true
	bars.Color = plotutil.Color(0)
	bars.LineStyle.Width = 0
	eb, err := plotter.NewXErrorBars(errs)
	if err != nil {
		return nil, 0, "", err.Error()
	}
	p.Add(plotter.NewGrid(), bars, eb)
	p.NominalY(names...)
	p.X.Min = 0
	return p, barHeight(len(ss)), "Mean decode tokens per second with 95% confidence intervals (Student's t over runs).", ""
}

func plotBreakdown(sums []Summary) (*plot.Plot, vg.Length, string, string) {
	var ss []Summary
	stages := 0
	for _, s := range sums {
		if s.Step.N > 0 {
			ss = append(ss, s)
			stages = max(stages, len(s.StageForward))
		}
	}
	if len(ss) == 0 {
		return nil, 0, "", "no run reported per-step timings"
	}
	ss = reversed(ss)
	type part struct {
		name string
		v    func(Summary) float64
	}
	var parts []part
	if stages == 0 {
		parts = append(parts, part{"forward", func(s Summary) float64 { return s.Forward.Mean }})
	}
	for i := range stages {
		parts = append(parts, part{fmt.Sprintf("forward stage %d", i+1), func(s Summary) float64 {
			if len(s.StageForward) == 0 {
				if i == 0 {
					return s.Forward.Mean // single-process runs: the whole model is "stage 1"
				}
				return 0
			}
			if i < len(s.StageForward) {
				return s.StageForward[i].Mean
			}
			return 0
		}})
	}
	hops := 0
	for _, s := range ss {
		if len(s.HopNetwork) > 1 {
			hops = max(hops, len(s.HopNetwork))
		}
	}
	// Runs that timed each hop (3 or more stages over TCP) show them one by one; the others
	// their whole time on the wire.
	parts = append(parts, part{"network", func(s Summary) float64 {
		if len(s.HopNetwork) > 1 {
			return 0
		}
		return s.Network.Mean
	}})
	for i := range hops {
		parts = append(parts, part{fmt.Sprintf("network stage %d-%d", i+1, i+2), func(s Summary) float64 {
			if len(s.HopNetwork) > 1 && i < len(s.HopNetwork) {
				return s.HopNetwork[i].Mean
			}
			return 0
		}})
	}
	parts = append(parts,
		part{"sampling", func(s Summary) float64 { return s.Sample.Mean }},
		part{"drafting", func(s Summary) float64 { return s.Draft.Mean }},
	)
	p := plot.New()
	p.Title.Text = "Where a decode step goes"
	p.X.Label.Text = "mean milliseconds per step"
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	names := make([]string, len(ss))
	widest := 0.0
	for i, s := range ss {
		names[i] = s.Label
		widest = max(widest, nz(s.Forward.Mean)+nz(s.Network.Mean)+nz(s.Sample.Mean)+nz(s.Draft.Mean))
	}
	var below *plotter.BarChart
	for j, pt := range parts {
		vals := make(plotter.Values, len(ss))
		nonzero := false
		for i, s := range ss {
			vals[i] = nz(pt.v(s))
			nonzero = nonzero || vals[i] > 0
		}
		if !nonzero {
			continue
		}
		b, err := plotter.NewBarChart(vals, 0.6*vg.Centimeter)
		if err != nil {
			return nil, 0, "", err.Error()
		}
		b.Horizontal = true
		b.Color = plotutil.Color(j)
		b.LineStyle.Width = 0
		if below != nil {
			b.StackOn(below)
		}
		below = b
		p.Add(b)
		p.Legend.Add(pt.name, b)
	}
	p.NominalY(names...)
	p.X.Min = 0
	p.X.Max = widest * 1.3 // room for the legend on the right
	return p, barHeight(len(ss)) + 0.5*vg.Inch, "Mean per-step time split into forward (per pipeline stage), network (per hop where timed), sampling and drafting.", ""
}

func plotCDF(sums []Summary) (*plot.Plot, vg.Length, string, string) {
	byLink := map[string][]float64{}
	var links []string
	hasLink := false
	for _, s := range sums {
		if len(s.steps) == 0 {
			continue
		}
		l := s.Config.Link
		if l == "" {
			l = "local (single process)"
		} else {
			hasLink = true
		}
		if _, ok := byLink[l]; !ok {
			links = append(links, l)
		}
		byLink[l] = append(byLink[l], s.steps...)
	}
	if !hasLink {
		return nil, 0, "", "no run used a link (no pipeline runs with per-step timings)"
	}
	p := plot.New()
	p.Title.Text = "Decode step latency by link"
	p.X.Label.Text = "step milliseconds"
	p.Y.Label.Text = "fraction of steps"
	p.Legend.Top = false // bottom right: a CDF leaves that corner empty
	p.Legend.Left = false
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	for i, l := range links {
		xs := slices.Clone(byLink[l])
		sort.Float64s(xs)
		pts := make(plotter.XYs, 0, 2*len(xs))
		for j, x := range xs {
			// A step function: the CDF jumps at each sample.
			pts = append(pts, plotter.XY{X: x, Y: float64(j) / float64(len(xs))}, plotter.XY{X: x, Y: float64(j+1) / float64(len(xs))})
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return nil, 0, "", err.Error()
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.5)
		line.Dashes = plotutil.Dashes(i)
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s (%d steps)", l, len(xs)), line)
	}
	return p, 5 * vg.Inch, "Empirical CDF of whole decode-step time, pooled over every configuration that used the link.", ""
}

// SpeedupSeries is one drafter's measured speedup against draft length, with the analytic model.
type SpeedupSeries struct {
	// Name identifies the drafter configuration (mode, drafter, draft model).
	Name string
	// K, Speedup and Err are the measured points: draft length, tok/s over the matching
	// non-speculative configuration's tok/s, and the half-width of its approximate 95% CI. Speedup
	// is NaN when the sweep has no matching baseline.
	K       []int
	Speedup []float64
	Err     []float64
	// TokensPerStep is, per point, the tokens a speculative step emitted on average (kept drafts
	// plus the target's own token); Verify is its verify forward's time over one step of the
	// baseline (NaN without a baseline). Leviathan et al. count a verify as one target step.
	TokensPerStep []float64
	Verify        []float64
	// Alpha is Leviathan et al.'s acceptance rate: the chance that the target keeps a draft when
	// it kept every draft before it, estimated from the acceptance by position of every point
	// (bench.AcceptanceRate). NaN when nothing was drafted.
	Alpha float64
	// Drafting is the share of the points' steps that proposed drafts (below 1 for lookup, which
	// proposes nothing where it finds no match).
	Drafting float64
	// DraftFixed and CostRatio model the draft time of a step as DraftFixed + CostRatio*K
	// baseline steps, fitted over the points (see fitDraftCost): an autoregressive draft model
	// costs about CostRatio per token (the paper's c), a block drafter such as DFlash about
	// DraftFixed per step whatever K.
	DraftFixed, CostRatio float64
	// Confidence is the configuration's draft confidence: above 0 its drafts were cut to varying
	// lengths, so Leviathan's analytic speedup, which assumes K drafts a step, does not apply.
	Confidence float64
}

// Analytic is Leviathan et al.'s expected speedup of speculative decoding for draft length k: the
// expected tokens per step (1 - a^(k+1)) / (1 - a), divided by the cost of a step relative to one
// target step, 1 + c0 + k*c (the verify counted as one target step; c0 is the draft's fixed cost
// per step, 0 for the paper's draft model). A drafter that proposes at only a share q of its steps
// makes 1 + q((1 - a^(k+1)) / (1 - a) - 1) tokens per step (bench.ExpectedStepTokens).
func Analytic(a, q, c0, c float64, k int) float64 {
	return bench.ExpectedSpeedup(a, k, q, c0+float64(k)*c, 1)
}

// fitDraftCost fits cost ≈ c0 + c*k (both at least 0) by least squares over the points: with
// one draft length (or no spread), c0 = 0 and c is the mean cost per draft token.
func fitDraftCost(ks []int, costs []float64) (c0, c float64) {
	var xs, ys []float64
	for i, y := range costs {
		if !math.IsNaN(y) && !math.IsInf(y, 0) {
			xs, ys = append(xs, float64(ks[i])), append(ys, y)
		}
	}
	if len(xs) == 0 {
		return 0, 0
	}
	through0 := func() (float64, float64) { // c0 = 0
		var xy, xx float64
		for i := range xs {
			xy, xx = xy+xs[i]*ys[i], xx+xs[i]*xs[i]
		}
		return 0, max(xy/xx, 0)
	}
	if floats.Min(xs) == floats.Max(xs) {
		return through0()
	}
	c0, c = stat.LinearRegression(xs, ys, nil, false)
	switch {
	case c < 0: // cost falls with k: noise; a constant fits better than a negative slope
		return max(stat.Mean(ys, nil), 0), 0
	case c0 < 0:
		return through0()
	}
	return c0, c
}

// Speedups groups speculative configurations by drafter (any drafter: mode, drafter and draft
// model name a series) and pairs each with its baseline: the same configuration in the mode
// without speculation (spec -> standalone, pipeline+spec -> pipeline). The cost of a baseline
// step is its whole decode step (forward, sample and network), since a standalone step's forward
// time alone is only the time to enqueue it.
func Speedups(sums []Summary) []SpeedupSeries {
	byKey := map[string]Summary{}
	for _, s := range sums {
		byKey[s.Key] = s
	}
	type acc struct {
		series SpeedupSeries
		byPos  [][]float64
		steps  []int // drafting steps per point
		all    int   // steps of every point
		costs  []float64
	}
	var order []string
	groups := map[string]*acc{}
	for _, s := range withDecode(sums) {
		if (s.Config.Mode != "spec" && s.Config.Mode != "pipeline+spec") || s.Config.DraftTokens < 1 {
			continue
		}
		k := s.Config.DraftTokens
		gc := s.Config
		gc.DraftTokens = 0
		gk := ConfigKey(gc)
		g := groups[gk]
		if g == nil {
			g = &acc{series: SpeedupSeries{Name: specName(s.Config), Confidence: s.Config.DraftConfidence}}
			groups[gk] = g
			order = append(order, gk)
		}
		b, ok := byKey[ConfigKey(baseline(s.Config))]
		speed, errw, verify, cost := math.NaN(), math.NaN(), math.NaN(), math.NaN()
		if ok && b.DecodeTokS.N > 0 {
			speed = s.DecodeTokS.Mean / b.DecodeTokS.Mean
			ra := s.DecodeTokS.HalfWidth() / s.DecodeTokS.Mean
			rb := b.DecodeTokS.HalfWidth() / b.DecodeTokS.Mean
			errw = speed * math.Hypot(nz(ra), nz(rb))
			if t := b.Step.Mean; t > 0 {
				verify = s.Forward.Mean / t
				if s.Draft.N > 0 {
					cost = s.Draft.Mean / t
				}
			}
		}
		g.series.K = append(g.series.K, k)
		g.series.Speedup = append(g.series.Speedup, speed)
		g.series.Err = append(g.series.Err, errw)
		g.series.TokensPerStep = append(g.series.TokensPerStep, s.TokensPerStep)
		g.series.Verify = append(g.series.Verify, verify)
		g.byPos = append(g.byPos, s.AcceptByPosition)
		g.steps = append(g.steps, s.DraftingSteps)
		g.all += s.Step.N
		g.costs = append(g.costs, cost)
	}
	out := make([]SpeedupSeries, 0, len(order))
	for _, gk := range order {
		g := groups[gk]
		g.series.Alpha = bench.AcceptanceRate(g.byPos, g.steps)
		g.series.Drafting = bench.DraftingShare(g.steps, g.all)
		g.series.DraftFixed, g.series.CostRatio = fitDraftCost(g.series.K, g.costs)
		out = append(out, g.series)
	}
	return out
}

func baseline(c bench.Config) bench.Config {
	if c.Mode == "spec" {
		c.Mode = "standalone"
	} else {
		c.Mode = "pipeline"
	}
	c.Drafter, c.Draft, c.DraftTokens, c.DraftConfidence = "", "", 0, 0
	return c
}

func plotSpeedup(sums []Summary) (*plot.Plot, vg.Length, string, string) {
	series := Speedups(sums)
	if len(series) == 0 {
		return nil, 0, "", "no speculative runs (mode spec or pipeline+spec with draft_tokens set)"
	}
	p := plot.New()
	p.Title.Text = "Speculative decoding: speedup vs draft length"
	p.X.Label.Text = "draft tokens K"
	p.Y.Label.Text = "speedup over the same setup without speculation"
	p.Legend.Top = true
	p.Legend.Left = true
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	maxK, entries := 1, 0
	for _, s := range series {
		for _, k := range s.K {
			maxK = max(maxK, k)
		}
	}
	for i, s := range series {
		col := plotutil.Color(i)
		var pts plotter.XYs
		var errs yErrs
		for j, k := range s.K {
			if math.IsNaN(s.Speedup[j]) {
				continue
			}
			pts = append(pts, plotter.XY{X: float64(k), Y: s.Speedup[j]})
			errs.XYs = append(errs.XYs, plotter.XY{X: float64(k), Y: s.Speedup[j]})
			e := nz(s.Err[j])
			errs.YErrors = append(errs.YErrors, struct{ Low, High float64 }{e, e})
		}
		if len(pts) > 0 {
			sc, err := plotter.NewScatter(pts)
			if err != nil {
				return nil, 0, "", err.Error()
			}
			sc.Color = col
			sc.Shape = draw.CircleGlyph{}
			sc.Radius = vg.Points(3)
			eb, err := plotter.NewYErrorBars(errs)
			if err != nil {
				return nil, 0, "", err.Error()
			}
			eb.Color = col
			p.Add(sc, eb)
			p.Legend.Add(s.Name+" measured", sc)
			entries++
		}
		if math.IsNaN(s.Alpha) || s.Confidence > 0 {
			continue
		}
		var curve plotter.XYs
		for k := 1; k <= maxK; k++ {
			curve = append(curve, plotter.XY{X: float64(k), Y: Analytic(s.Alpha, s.Drafting, s.DraftFixed, s.CostRatio, k)})
		}
		line, err := plotter.NewLine(curve)
		if err != nil {
			return nil, 0, "", err.Error()
		}
		line.Color = col
		line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(line)
		name := fmt.Sprintf("%s analytic (a=%.2f, draft %.3f+%.3fK)", s.Name, s.Alpha, s.DraftFixed, s.CostRatio)
		if s.Drafting < 0.995 {
			name = fmt.Sprintf("%s analytic (a=%.2f, drafts at %.0f%% of steps)", s.Name, s.Alpha, 100*s.Drafting)
		}
		p.Legend.Add(name, line)
		entries++
	}
	one, err := plotter.NewLine(plotter.XYs{{X: 1, Y: 1}, {X: float64(maxK), Y: 1}})
	if err == nil {
		one.Color = color.Gray{Y: 150}
		one.Width = vg.Points(1.5)
		p.Add(one)
	}
	p.Y.Min = max(p.Y.Min, 0) // a CI reaching below 0 says only that the run was noisy
	legendHeadroom(p, entries, 5*vg.Inch)
	return p, 5 * vg.Inch, "Measured speedup (points, approximate 95% CI) against Leviathan et al.'s (2023) analytic expectation (1-a^(K+1))/((1-a)(1+c0+Kc)) (dashed), with a the acceptance rate estimated from the acceptance by position and c0+Kc the measured draft time per step in target steps; it counts a verify as one target step, so where verifying K+1 tokens costs more (a CPU), the points fall below it.", ""
}

// legendHeadroom raises p.Y.Max so that a legend of n entries at the top of a plot h tall sits
// above the data instead of over it: the data keep the lower part of the Y range, the legend's
// rows (about 1.3 font heights each) the upper part.
func legendHeadroom(p *plot.Plot, n int, h vg.Length) {
	area := h - vg.Inch // the title, the X axis and its label take about an inch
	rows := vg.Length(n) * p.Legend.TextStyle.Font.Size * 1.3
	f := min(float64(rows/area), 0.7) // share of the Y range the legend needs
	if f <= 0 || p.Y.Max <= p.Y.Min {
		return
	}
	p.Y.Max = p.Y.Min + (p.Y.Max-p.Y.Min)/(1-f)
}

// specName names a speculative configuration's series: its mode and drafter, and the draft's
// directory name when it has one.
func specName(c bench.Config) string {
	name := c.Mode + " drafter=" + c.Drafter
	if c.Draft != "" {
		name += " (" + modelName(c.Draft) + ")"
	}
	if c.DraftConfidence > 0 {
		name += fmt.Sprintf(" confidence=%g", c.DraftConfidence)
	}
	return name
}

// plotAcceptByPosition draws, for every speculative configuration, the acceptance rate at each
// draft position: how far into a draft the target keeps agreeing.
func plotAcceptByPosition(sums []Summary) (*plot.Plot, vg.Length, string, string) {
	p := plot.New()
	p.Title.Text = "Speculative decoding: acceptance by draft position"
	p.X.Label.Text = "draft position"
	p.Y.Label.Text = "share of steps that kept the draft at this position"
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	n, top := 0, 0.0
	for _, s := range sums {
		if len(s.AcceptByPosition) == 0 {
			continue
		}
		var pts plotter.XYs
		for i, v := range s.AcceptByPosition {
			pts = append(pts, plotter.XY{X: float64(i + 1), Y: v})
			top = max(top, v)
		}
		line, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, 0, "", err.Error()
		}
		line.Color, sc.Color = plotutil.Color(n), plotutil.Color(n)
		line.Dashes = plotutil.Dashes(n)
		p.Add(line, sc)
		label := s.Label
		if s.Config.DraftTokens > 0 {
			label = fmt.Sprintf("%s K=%d", specName(s.Config), s.Config.DraftTokens)
		}
		p.Legend.Add(label, line, sc)
		n++
	}
	if n == 0 {
		return nil, 0, "", "no speculative runs with acceptance by position"
	}
	// From 0 to a little above the highest share (at most 1), so that low acceptance stays legible.
	p.Y.Min, p.Y.Max = 0, min(1, max(0.1, 1.15*top))
	legendHeadroom(p, n, 5*vg.Inch)
	return p, 5 * vg.Inch, "Acceptance rate at each draft position, averaged over runs: a draft at position i counts as kept only when every earlier one was, so the curve falls; its sum is the mean number of drafts kept per step.", ""
}

// ModeBest is the fastest configuration of one mode for one model.
type ModeBest struct {
	Model, Mode string
	Summary     Summary
}

// BestPerMode picks, for every model and mode, the configuration with the highest mean decode
// tok/s, in the order standalone, pipeline, spec, pipeline+spec, openai.
func BestPerMode(sums []Summary) []ModeBest {
	modes := []string{"standalone", "pipeline", "spec", "pipeline+spec", "openai"}
	best := map[[2]string]Summary{}
	var models []string
	for _, s := range withDecode(sums) {
		m := modeName(s.Config.Mode)
		if !slices.Contains(modes, m) {
			modes = append(modes, m)
		}
		if !slices.Contains(models, s.Config.Model) {
			models = append(models, s.Config.Model)
		}
		k := [2]string{s.Config.Model, m}
		if b, ok := best[k]; !ok || s.DecodeTokS.Mean > b.DecodeTokS.Mean {
			best[k] = s
		}
	}
	var out []ModeBest
	for _, model := range models {
		for _, m := range modes {
			if s, ok := best[[2]string{model, m}]; ok {
				out = append(out, ModeBest{Model: model, Mode: m, Summary: s})
			}
		}
	}
	return out
}

func plotModes(sums []Summary) (*plot.Plot, vg.Length, string, string) {
	best := BestPerMode(sums)
	modes := map[string]int{}
	models := map[string]bool{}
	for _, b := range best {
		if _, ok := modes[b.Mode]; !ok {
			modes[b.Mode] = len(modes)
		}
		models[b.Model] = true
	}
	if len(modes) < 2 {
		return nil, 0, "", "fewer than two modes have successful runs"
	}
	p := plot.New()
	p.Title.Text = "Best configuration per mode"
	p.Y.Label.Text = "decode tok/s (mean, 95% CI)"
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	names := make([]string, len(best))
	legend := map[string]bool{}
	for i, b := range best {
		names[i] = b.Mode
		if len(models) > 1 {
			names[i] = modelName(b.Model) + "\n" + b.Mode
		}
		bar, err := plotter.NewBarChart(plotter.Values{nz(b.Summary.DecodeTokS.Mean)}, 1.2*vg.Centimeter)
		if err != nil {
			return nil, 0, "", err.Error()
		}
		bar.XMin = float64(i)
		bar.Color = plotutil.Color(modes[b.Mode])
		bar.LineStyle.Width = 0
		p.Add(bar)
		if !legend[b.Mode] {
			legend[b.Mode] = true
			p.Legend.Add(b.Mode, bar)
		}
		h := nz(b.Summary.DecodeTokS.HalfWidth())
		eb, err := plotter.NewYErrorBars(yErrs{
			XYs:     plotter.XYs{{X: float64(i), Y: nz(b.Summary.DecodeTokS.Mean)}},
			YErrors: plotter.YErrors{{Low: h, High: h}},
		})
		if err != nil {
			return nil, 0, "", err.Error()
		}
		p.Add(eb)
	}
	p.NominalX(names...)
	p.Y.Min = 0
	return p, 5 * vg.Inch, "The fastest configuration of each mode (see the table for which one).", ""
}
