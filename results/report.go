package results

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hippo-bench/hippo/bench"
)

// Output file names inside a sweep directory.
const (
	SummaryFile = "summary.csv"
	ReportFile  = "report.md"
)

// BuildOptions selects what Build writes. The zero value writes everything next to runs.jsonl.
type BuildOptions struct {
	// Out is the directory to write into; empty means the directory holding runs.jsonl.
	Out string
	// PlotsOnly skips summary.csv and report.md.
	PlotsOnly bool
}

// Built is what Build produced.
type Built struct {
	Records   []Record
	Summaries []Summary
	Plots     Plots
	// Files are the paths written, relative to the output directory.
	Files []string
}

// Build regenerates the derived outputs of a sweep from dir/runs.jsonl alone: summary.csv, the
// plots (PNG and SVG) and report.md. Plots without data are skipped and named in the report.
func Build(dir string, opts BuildOptions) (*Built, error) {
	recs, err := ReadRuns(filepath.Join(dir, RunsFile))
	if err != nil {
		return nil, err
	}
	out := opts.Out
	if out == "" {
		out = dir
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", out, err)
	}
	b := &Built{Records: recs, Summaries: Summarize(recs)}
	if err := RemovePlots(out); err != nil {
		return nil, fmt.Errorf("remove old plots: %w", err)
	}
	b.Plots, err = WritePlots(out, b.Summaries)
	if err != nil {
		return nil, err
	}
	for _, f := range b.Plots.Figures {
		b.Files = append(b.Files, f.Files...)
	}
	if opts.PlotsOnly {
		return b, nil
	}
	if err := writeFile(filepath.Join(out, SummaryFile), func(w io.Writer) error { return WriteCSV(w, b.Summaries) }); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(out, ReportFile), func(w io.Writer) error {
		return WriteReport(w, recs, b.Summaries, b.Plots)
	}); err != nil {
		return nil, err
	}
	b.Files = append(b.Files, SummaryFile, ReportFile)
	return b, nil
}

// writeFile writes through a temporary file and renames it, so readers never see half a report.
func writeFile(path string, fn func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := fn(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// num formats x with prec decimals, or "" when it is NaN.
func num(x float64, prec int) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return ""
	}
	return strconv.FormatFloat(x, 'f', prec, 64)
}

// cell is num for tables: "–" instead of "".
func cell(x float64, prec int) string {
	if s := num(x, prec); s != "" {
		return s
	}
	return "–"
}

// WriteCSV writes one row per configuration: its settings, then every statistic (empty where it
// cannot be computed).
func WriteCSV(w io.Writer, sums []Summary) error {
	cw := csv.NewWriter(w)
	header := []string{"key", "label", "model", "mode", "stages", "transport", "link", "drafter", "draft", "draft_tokens",
		"dtype", "max_tokens", "temperature", "prompts", "n", "failed"}
	est := func(p string) []string {
		return []string{p + "_mean", p + "_stddev", p + "_ci_low", p + "_ci_high", p + "_median"}
	}
	dist := func(p string) []string {
		return []string{p + "_n", p + "_mean", p + "_p50", p + "_p90", p + "_p99", p + "_max"}
	}
	header = append(header, est("decode_tok_s")...)
	header = append(header, est("ttft_ms")...)
	header = append(header, est("prefill_tok_s")...)
	for _, p := range []string{"step_ms", "forward_ms", "network_ms", "sample_ms", "draft_ms"} {
		header = append(header, dist(p)...)
	}
	header = append(header, "network_share", "tokens_per_step")
	header = append(header, est("acceptance_rate")...)
	header = append(header, "drafted", "accepted")
	if err := cw.Write(header); err != nil {
		return err
	}
	e := func(x Estimate) []string {
		return []string{num(x.Mean, 4), num(x.Stddev, 4), num(x.CILow, 4), num(x.CIHigh, 4), num(x.Median, 4)}
	}
	d := func(x Distribution) []string {
		return []string{strconv.Itoa(x.N), num(x.Mean, 4), num(x.Median, 4), num(x.P90, 4), num(x.P99, 4), num(x.Max, 4)}
	}
	for _, s := range sums {
		c := s.Config
		row := []string{s.Key, s.Label, c.Model, c.Mode, itoa(c.Stages), c.Transport, c.Link, c.Drafter, c.Draft, itoa(c.DraftTokens),
			c.Dtype, itoa(c.MaxTokens), num(c.Temperature, 4), strconv.Itoa(s.Prompts), strconv.Itoa(s.DecodeTokS.N), strconv.Itoa(s.Failed)}
		row = append(row, e(s.DecodeTokS)...)
		row = append(row, e(s.TTFTMS)...)
		row = append(row, e(s.PrefillTokS)...)
		for _, x := range []Distribution{s.Step, s.Forward, s.Network, s.Sample, s.Draft} {
			row = append(row, d(x)...)
		}
		row = append(row, num(s.NetworkShare, 4), num(s.TokensPerStep, 4))
		if s.Acceptance != nil {
			row = append(row, e(*s.Acceptance)...)
		} else {
			row = append(row, "", "", "", "", "")
		}
		row = append(row, itoa(s.Drafted), itoa(s.Accepted))
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func itoa(i int) string {
	if i == 0 {
		return ""
	}
	return strconv.Itoa(i)
}

// EnvCount is one distinct environment and how many records were measured in it.
type EnvCount struct {
	Env  Env
	Runs int
}

// Environments lists the distinct environments of recs (link parameters aside), most runs first.
func Environments(recs []Record) []EnvCount {
	var out []EnvCount
	idx := map[string]int{}
	for _, r := range recs {
		e := r.Env
		e.Link = nil
		k := fmt.Sprintf("%+v", e)
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, EnvCount{Env: e})
		}
		out[i].Runs++
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Runs > out[j].Runs })
	return out
}

func gib(b uint64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}

func md(s string) string {
	if s == "" {
		return "–"
	}
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

// WriteReport writes report.md: what ran and where, the statistics tables, the plots as relative
// image links, the plots that were skipped and why, and the failures.
func WriteReport(w io.Writer, recs []Record, sums []Summary, plots Plots) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	name := "sweep"
	var first, last time.Time
	warm, measured, failed := 0, 0, 0
	for _, r := range recs {
		if r.Sweep != "" {
			name = r.Sweep
		}
		if r.Started.IsZero() {
			continue
		}
		if first.IsZero() || r.Started.Before(first) {
			first = r.Started
		}
		if end := r.Started.Add(time.Duration(r.ElapsedMS * float64(time.Millisecond))); end.After(last) {
			last = end
		}
	}
	for _, r := range Latest(recs) {
		switch {
		case r.Warmup:
			warm++
		case r.OK():
			measured++
		default:
			failed++
		}
	}
	p("# Sweep `%s`\n\n", name)
	p("%d measured runs over %d configurations", measured, len(sums))
	if failed > 0 {
		p(", %d failed", failed)
	}
	p("; %d warm-up runs excluded from statistics.", warm)
	if !first.IsZero() {
		p(" Runs from %s to %s (%s).", first.Format(time.RFC3339), last.Format(time.RFC3339), last.Sub(first).Round(time.Second))
	}
	p(" Regenerate with `hippo report DIR`; raw data in `%s`.\n\n", RunsFile)

	p("## Environment\n\n")
	p("| host | OS/arch | CPU | cores | RAM | Go | MLX | git commit | hosts file | runs |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, e := range Environments(recs) {
		v := e.Env
		p("| %s | %s/%s | %s | %s | %s | %s | %s | %s | %s | %d |\n", md(v.Host), md(v.OS), md(v.Arch), md(v.CPU), itoaDash(v.CPUs),
			gib(v.RAMBytes), md(v.GoVersion), md(v.MLXVersion), md(v.GitCommit), md(v.Hosts), e.Runs)
	}
	p("\n")
	links := linkParams(recs)
	if len(links) > 0 {
		p("### Link profiles\n\n| link | parameters |\n|---|---|\n")
		names := make([]string, 0, len(links))
		for l := range links {
			names = append(names, l)
		}
		sort.Strings(names)
		for _, l := range names {
			p("| %s | %s |\n", md(l), md(links[l]))
		}
		p("\n")
	}
	if common := commonSettings(sums); common != "" {
		p("Settings shared by every configuration: %s.\n\n", common)
	}

	if len(sums) > 0 {
		p("## Decode throughput\n\n")
		p("n is the number of successful measured runs (all prompts and repeats); the interval is the 95%% confidence interval of the mean (Student's t).\n\n")
		p("| configuration | n | failed | decode tok/s | 95%% CI | stddev | median | TTFT ms | prefill tok/s | tokens/step | acceptance |\n")
		p("|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range sums {
			acc := "–"
			if s.Acceptance != nil {
				acc = cell(s.Acceptance.Mean, 3)
			}
			ci := "–"
			if !math.IsNaN(s.DecodeTokS.CILow) {
				ci = fmt.Sprintf("%s – %s", cell(s.DecodeTokS.CILow, 2), cell(s.DecodeTokS.CIHigh, 2))
			}
			p("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", md(s.Label), s.DecodeTokS.N, s.Failed,
				cell(s.DecodeTokS.Mean, 2), ci, cell(s.DecodeTokS.Stddev, 2), cell(s.DecodeTokS.Median, 2),
				cell(s.TTFTMS.Mean, 1), cell(s.PrefillTokS.Mean, 1), cell(s.TokensPerStep, 2), acc)
		}
		p("\n## Per-step latency (ms)\n\n")
		p("Pooled over every decode step of the measured runs. Network share is network time over step time.\n\n")
		p("| configuration | steps | step p50 | step p90 | step p99 | forward mean | network mean | network p99 | sample mean | draft mean | network share |\n")
		p("|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range sums {
			share := "–"
			if !math.IsNaN(s.NetworkShare) && s.Network.N > 0 {
				share = fmt.Sprintf("%.1f%%", 100*s.NetworkShare)
			}
			p("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", md(s.Label), s.Step.N,
				cell(s.Step.Median, 2), cell(s.Step.P90, 2), cell(s.Step.P99, 2), cell(s.Forward.Mean, 2),
				cell(s.Network.Mean, 2), cell(s.Network.P99, 2), cell(s.Sample.Mean, 3), cell(s.Draft.Mean, 2), share)
		}
		p("\n")
	}

	if best := BestPerMode(sums); len(best) > 1 {
		p("## Best configuration per mode\n\n| model | mode | configuration | decode tok/s | 95%% CI half-width |\n|---|---|---|---|---|\n")
		for _, m := range best {
			p("| %s | %s | %s | %s | %s |\n", md(modelName(m.Model)), m.Mode, md(m.Summary.Label), cell(m.Summary.DecodeTokS.Mean, 2), cell(m.Summary.DecodeTokS.HalfWidth(), 2))
		}
		p("\n")
	}
	if series := Speedups(sums); len(series) > 0 {
		p("## Speculative decoding\n\n")
		p("Speedup is tok/s over the same setup without speculation. Analytic is Leviathan et al.'s (2023) (1-a^(K+1))/((1-a)(1+c0+Kc)): a is the chance that the target keeps a draft when it kept the ones before it, estimated from the acceptance by position (kept drafts over kept drafts plus steps that rejected one); c0+Kc is the draft time per step in baseline steps, fitted over the drafter's K. Tokens/step compares the measured tokens per step with the expected (1-a^(K+1))/(1-a); for a drafter that proposes at only a share q of its steps (lookup, where it finds no match) both the expected tokens and the analytic speedup use 1+q((1-a^(K+1))/(1-a)-1). The analytic curve counts a verify as one target step; verify is the measured verify forward over one baseline step, and where it exceeds 1 the measured speedup falls short of the analytic one by about that factor. Drafts cut by the drafter's confidence (draft_confidence) vary in length, so their rows have no expected tokens or analytic value.\n\n")
		p("| drafter | a | draft cost c0 + cK | K | tokens/step measured (expected) | verify / step | measured speedup | analytic |\n|---|---|---|---|---|---|---|---|\n")
		for _, s := range series {
			for i, k := range s.K {
				an, exp := "–", "–"
				if !math.IsNaN(s.Alpha) && s.Confidence == 0 {
					an = cell(Analytic(s.Alpha, s.Drafting, s.DraftFixed, s.CostRatio, k), 2)
					exp = cell(bench.ExpectedStepTokens(s.Alpha, k, s.Drafting), 2)
				}
				p("| %s | %s | %s + %sK | %d | %s (%s) | %s | %s | %s |\n", md(s.Name), cell(s.Alpha, 3), cell(s.DraftFixed, 3), cell(s.CostRatio, 4), k,
					cell(s.TokensPerStep[i], 2), exp, cell(s.Verify[i], 2), cell(s.Speedup[i], 2), an)
			}
		}
		p("\n")
	}

	p("## Plots\n\n")
	for _, f := range plots.Figures {
		p("### %s\n\n%s\n\n![%s](%s)\n\n", f.Title, f.Caption, f.Title, f.Files[0])
		if len(f.Files) > 1 {
			p("Vector version: [%s](%s).\n\n", f.Files[1], f.Files[1])
		}
	}
	if len(plots.Figures) == 0 {
		p("No plots: there is no data to draw.\n\n")
	}
	if len(plots.Skipped) > 0 {
		p("Skipped plots:\n\n")
		for _, s := range plots.Skipped {
			p("- `%s`: %s\n", s.Name, s.Reason)
		}
		p("\n")
	}

	var fails []Record
	for _, r := range Latest(recs) {
		if !r.OK() {
			fails = append(fails, r)
		}
	}
	if len(fails) > 0 {
		p("## Failed runs\n\nFailed: %d (latest attempt of each run id); `hippo sweep --resume DIR` re-runs them.\n\n", len(fails))
		p("| id | mode | model | repeat | warm-up | error |\n|---|---|---|---|---|---|\n")
		for i, r := range fails {
			if i == 50 {
				p("\n…and %d more (see %s).\n", len(fails)-50, RunsFile)
				break
			}
			p("| %s | %s | %s | %d | %t | %s |\n", r.ID, md(r.Config.Mode), md(r.Config.Model), r.Repeat, r.Warmup, md(truncate(r.Error, 200)))
		}
		p("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func itoaDash(i int) string {
	if i == 0 {
		return "–"
	}
	return strconv.Itoa(i)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func linkParams(recs []Record) map[string]string {
	out := map[string]string{}
	for _, r := range recs {
		if r.Config.Link == "" || len(r.Env.Link) == 0 {
			continue
		}
		keys := make([]string, 0, len(r.Env.Link))
		for k := range r.Env.Link {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%v", k, r.Env.Link[k])
		}
		out[r.Config.Link] = strings.Join(parts, ", ")
	}
	return out
}

// commonSettings names the settings that every configuration shares, for the report's preamble.
func commonSettings(sums []Summary) string {
	if len(sums) == 0 {
		return ""
	}
	maps := make([]map[string]any, len(sums))
	for i, s := range sums {
		maps[i] = configMap(s.Config)
	}
	var keys []string
	for k, v := range maps[0] {
		same := true
		for _, m := range maps[1:] {
			if fmt.Sprint(m[k]) != fmt.Sprint(v) {
				same = false
				break
			}
		}
		if same {
			keys = append(keys, k)
		}
	}
	sortKeys(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, maps[0][k])
	}
	return strings.Join(parts, ", ")
}

// WriteComparison prints one row per configuration: decode tok/s in A and B (mean ± 95% CI half
// width, n), the ratio B/A, and Welch's two-sided p-value, starred when below alpha.
func WriteComparison(w io.Writer, cs []Comparison, alpha float64) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "configuration\tA tok/s\tnA\tB tok/s\tnB\tB/A\tp\t")
	for _, c := range cs {
		star := ""
		if c.Test.P < alpha {
			star = " *"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s%s\t\n", c.Label, pm(c.A), c.A.N, pm(c.B), c.B.N, cell(c.Ratio, 3), pval(c.Test.P), star)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\np: Welch's t-test, two-sided; * marks p < %g. B/A > 1 means B is faster.\n", alpha)
	return err
}

func pm(e Estimate) string {
	if e.N == 0 {
		return "–"
	}
	if math.IsNaN(e.HalfWidth()) {
		return cell(e.Mean, 2)
	}
	return fmt.Sprintf("%s ± %s", cell(e.Mean, 2), cell(e.HalfWidth(), 2))
}

func pval(p float64) string {
	switch {
	case math.IsNaN(p):
		return "–"
	case p < 0.0001:
		return "<0.0001"
	default:
		return strconv.FormatFloat(p, 'f', 4, 64)
	}
}

// CompareDirs reads runs.jsonl from two sweep directories and compares them (see Compare).
func CompareDirs(a, b string) ([]Comparison, error) {
	ra, err := ReadRuns(filepath.Join(a, RunsFile))
	if err != nil {
		return nil, err
	}
	rb, err := ReadRuns(filepath.Join(b, RunsFile))
	if err != nil {
		return nil, err
	}
	cs := Compare(ra, rb)
	if len(cs) == 0 {
		return nil, errors.New("compare: neither directory has measured runs")
	}
	return cs, nil
}
