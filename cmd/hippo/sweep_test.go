package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/experiments"
	"github.com/hippo-bench/hippo/results"
)

// stepExecutor is a fake engine: every run takes MaxTokens steps of fixed, mode-dependent cost.
type stepExecutor struct{ closed bool }

func (e *stepExecutor) Run(ctx context.Context, c bench.Config) (bench.Result, error) {
	res := bench.Result{Mode: c.Mode, Model: c.Model, TTFTMS: 30}
	total := 0.0
	for range c.MaxTokens {
		st := bench.Step{ForwardMS: 10, SampleMS: 0.2, Tokens: 1}
		if c.Stages > 1 {
			st.StageForwardMS = []float64{5, 5}
			st.NetworkMS = 0.5
		}
		total += st.ForwardMS + st.NetworkMS + st.SampleMS
		res.Steps = append(res.Steps, st)
	}
	res.DecodeTokS = float64(c.MaxTokens) / total * 1000
	return res, nil
}

func (e *stepExecutor) Close() error { e.closed = true; return nil }

func testApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:           "hippo",
		Commands:       []*cli.Command{sweepCommand(), plotCommand(), reportCommand(), compareCommand()},
		Writer:         stdout,
		ErrWriter:      stderr,
		ExitErrHandler: func(*cli.Context, error) {}, // keep cli.Exit from exiting the test binary
	}
}

func runApp(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := testApp(&stdout, &stderr).Run(append([]string{"hippo"}, args...))
	return stdout.String(), stderr.String(), err
}

func wireFake(t *testing.T) *stepExecutor {
	ex := &stepExecutor{}
	old := sweepEngine
	sweepEngine = sweepHooks{
		NewExecutor: func(context.Context, *experiments.Sweep) (experiments.Executor, error) { return ex, nil },
		MLXVersion:  func() string { return "0.32.4-test" },
		LinkParams:  func(link string) map[string]any { return map[string]any{"profile": link} },
	}
	t.Cleanup(func() { sweepEngine = old })
	return ex
}

func TestSweepReportPlotCompare(t *testing.T) {
	ex := wireFake(t)
	dir := filepath.Join(t.TempDir(), "quick")
	quick := filepath.Join("..", "..", "experiments", "quick.yaml")
	_, stderr, err := runApp(t, "sweep", "--out", dir, "--set", "max_tokens=4", "--quiet", quick)
	if err != nil {
		t.Fatalf("sweep: %v\n%s", err, stderr)
	}
	if !ex.closed {
		t.Error("the executor was not closed")
	}
	for _, f := range []string{results.RunsFile, results.SummaryFile, results.ReportFile, experiments.FlatFile, "tok-s.png", "modes.svg"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s missing or empty: %v", f, err)
		}
	}
	recs, err := results.ReadRuns(filepath.Join(dir, results.RunsFile))
	if err != nil || len(recs) != 6 {
		t.Fatalf("runs.jsonl: %d records, %v; want 6", len(recs), err)
	}
	if recs[0].Env.MLXVersion != "0.32.4-test" || recs[5].Env.Link["profile"] != "loopback" {
		t.Errorf("env = %+v; want the wired MLX version and link parameters", recs[5].Env)
	}

	// Resuming a finished sweep (the flattened copy stands in for the file) runs nothing.
	_, stderr, err = runApp(t, "sweep", "--resume", dir)
	if err != nil || !strings.Contains(stderr, "0 runs done (0 failed), 4 skipped") {
		t.Errorf("resume: %v\n%s", err, stderr)
	}

	out, _, err := runApp(t, "report", dir)
	if err != nil || !strings.Contains(out, "2 configurations") || !strings.Contains(out, "skipped speedup-vs-draft") {
		t.Errorf("report: %v\n%s", err, out)
	}
	plots := t.TempDir()
	out, _, err = runApp(t, "plot", "--out", plots, dir)
	if err != nil || !strings.Contains(out, "plot tok-s: tok-s.png, tok-s.svg") {
		t.Errorf("plot: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(plots, "step-breakdown.png")); err != nil {
		t.Errorf("plot --out: %v", err)
	}
	out, _, err = runApp(t, "compare", dir, dir)
	if err != nil || !strings.Contains(out, "B/A") || !strings.Contains(out, "1.000") {
		t.Errorf("compare: %v\n%s", err, out)
	}
}

func TestSweepErrors(t *testing.T) {
	quick := filepath.Join("..", "..", "experiments", "quick.yaml")
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("prompts: [x]\nmatrix:\n  model: m\n  mode: pipline\n"), 0o644)
	tests := []struct {
		name  string
		wire  bool
		args  []string
		wants []string
	}{
		{"invalid file", true, []string{"sweep", bad}, []string{"nothing ran", "bad.yaml:4:9: matrix.mode: unknown mode \"pipline\""}},
		{"bad override", true, []string{"sweep", "--set", "max_tokens=0", quick}, []string{"--set max_tokens=0: max_tokens: max_tokens must be at least 1"}},
		{"no sweep", true, []string{"sweep"}, []string{"which sweep?"}},
		{"no engine", false, []string{"sweep", "--out", t.TempDir(), quick}, []string{"no engine wired"}},
		{"report needs a dir", true, []string{"report"}, []string{"one sweep directory"}},
		{"report of nothing", true, []string{"report", t.TempDir()}, []string{"runs.jsonl"}},
		{"compare needs two", true, []string{"compare", "a"}, []string{"two sweep directories"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.wire {
				wireFake(t)
			} else {
				old := sweepEngine
				sweepEngine = sweepHooks{}
				t.Cleanup(func() { sweepEngine = old })
			}
			_, _, err := runApp(t, tt.args...)
			if err == nil {
				t.Fatalf("hippo %s = nil error; want one", strings.Join(tt.args, " "))
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestSweepDryRun(t *testing.T) {
	tests := []struct {
		name  string
		set   []string
		wants []string
	}{
		{name: "one value", set: []string{"repeats=1"}, wants: []string{"8 configurations x 2 prompts x 1 repeats", "24 runs", "thunderbolt"}},
		// A list keeps its commas: the flag must not split it into "link=[wifi" and "thunderbolt]".
		{name: "list", set: []string{"repeats=1", "link=[wifi,thunderbolt]"}, wants: []string{"6 configurations x 2 prompts x 1 repeats", "18 runs"}},
		{name: "prompts with commas", set: []string{"prompts=[\"a, b\", c]"}, wants: []string{"x 2 prompts"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"sweep", "--dry-run"}
			for _, s := range tt.set {
				args = append(args, "--set", s)
			}
			out, _, err := runApp(t, append(args, filepath.Join("..", "..", "experiments", "thunderbolt-vs-wifi.yaml"))...)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.wants {
				if !strings.Contains(out, want) {
					t.Errorf("dry run output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

func TestServeMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := experiments.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	addr, stop, err := serveMetrics("127.0.0.1:0", reg)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "hippo_sweep_runs_planned 0") {
		t.Errorf("/metrics lacks hippo_sweep_runs_planned:\n%s", body)
	}
}
