package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/experiments"
	"github.com/hippo-bench/hippo/results"
)

// sweepHooks connects `hippo sweep` to the engine. main sets sweepEngine before running the app.
type sweepHooks struct {
	// NewExecutor creates the executor for one sweep; s.Hosts is the hosts file ("" for local
	// processes). If the executor implements io.Closer, the sweep command closes it at the end.
	// Nil makes `hippo sweep` refuse to run (--dry-run still works).
	NewExecutor func(ctx context.Context, s *experiments.Sweep) (experiments.Executor, error)
	// MLXVersion is recorded with every run; nil records none.
	MLXVersion func() string
	// LinkParams describes a link profile (latency, bandwidth, source) for the run records; nil
	// records none.
	LinkParams func(link string) map[string]any
}

// sweepEngine is set by main (engine wiring lives there, so this file builds without the engine).
var sweepEngine sweepHooks

func sweepCommand() *cli.Command {
	return &cli.Command{
		Name:      "sweep",
		Usage:     "run a sweep file: every configuration, warm-ups and repeats, into runs.jsonl, summary.csv, plots and report.md",
		ArgsUsage: "SWEEP (a file, or a name in experiments/: quick, thunderbolt-vs-wifi, ...)",
		Description: "Results go to results/<name>/<timestamp>/ unless --out is given. Each finished run is\n" +
			"appended to runs.jsonl at once, so an interrupted sweep continues with --resume DIR\n" +
			"(SWEEP may then be omitted: DIR/sweep.yaml is used). Ctrl-C stops after the current run;\n" +
			"press it again to abort that run too.",
		Flags: []cli.Flag{
			wholeListFlag("set", "override a key of the sweep file, e.g. --set max_tokens=16 --set repeats=1 --set link=[wifi,thunderbolt] (repeat for several keys)"),
			&cli.StringFlag{Name: "out", Usage: "output directory (default results/<name>/<timestamp>)"},
			&cli.StringFlag{Name: "resume", Usage: "continue the sweep in `DIR`: skip runs that succeeded there, re-run failed and missing ones"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress bar or per-run lines"},
			&cli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics (progress, per-step histograms) on `ADDR`/metrics, e.g. 127.0.0.1:9464"},
			&cli.BoolFlag{Name: "dry-run", Usage: "validate and list the configurations and run count, run nothing"},
			&cli.BoolFlag{Name: "no-report", Usage: "write runs.jsonl only (build the rest later with hippo report DIR)"},
			&cli.BoolFlag{Name: "fail-on-error", Usage: "exit with status 1 when any run failed"},
		},
		Action: runSweep,
	}
}

// sweepPath resolves the SWEEP argument: an existing file, else experiments/NAME.yaml in the
// Hippo checkout.
func sweepPath(arg string) string {
	if _, err := os.Stat(arg); err == nil || strings.ContainsRune(arg, os.PathSeparator) || filepath.Ext(arg) != "" {
		return arg
	}
	return filepath.Join(home(), "experiments", arg+".yaml")
}

func runSweep(c *cli.Context) error {
	if c.NArg() > 1 {
		return fmt.Errorf("sweep takes one SWEEP argument, got %d (flags go before it)", c.NArg())
	}
	resume := c.String("resume")
	path := c.Args().First()
	switch {
	case path != "":
		path = sweepPath(path)
	case resume != "":
		path = filepath.Join(resume, experiments.FlatFile)
	default:
		return errors.New("which sweep? give a file or a name (hippo sweep quick), or --resume DIR")
	}
	s, err := experiments.Load(path, wholeValues(c, "set")...)
	if err != nil {
		var verr *experiments.ValidationError
		if errors.As(err, &verr) {
			return fmt.Errorf("invalid sweep, nothing ran:\n%w", err)
		}
		return err
	}
	if c.Bool("dry-run") {
		return printPlan(c.App.Writer, s)
	}

	dir := resume
	if dir == "" {
		dir = c.String("out")
	}
	if dir == "" {
		dir = newRunDir(filepath.Join(home(), "results", s.Name))
	}
	if resume != "" && c.String("out") != "" && filepath.Clean(c.String("out")) != filepath.Clean(resume) {
		return errors.New("--resume DIR continues DIR in place: drop --out")
	}
	if sweepEngine.NewExecutor == nil {
		return errors.New("this hippo build has no engine wired into sweep (sweepEngine.NewExecutor is nil); --dry-run still works")
	}

	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	abort := make(chan struct{})
	stopSignals := handleSignals(cancel, abort, c.App.ErrWriter)
	defer stopSignals()

	opts := experiments.RunOptions{Dir: dir, Resume: resume != "", Abort: abort, LinkParams: sweepEngine.LinkParams}
	mlx := ""
	if sweepEngine.MLXVersion != nil {
		mlx = sweepEngine.MLXVersion()
	}
	opts.Env = experiments.HostEnv(ctx, mlx, home())
	opts.Env.Hosts = s.Hosts
	stderr := c.App.ErrWriter
	if !c.Bool("quiet") {
		if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			opts.Progress = stderr
		} else {
			opts.Log = stderr
		}
	}
	if addr := c.String("metrics"); addr != "" {
		reg := prometheus.NewRegistry()
		m, err := experiments.NewMetrics(reg)
		if err != nil {
			return err
		}
		opts.Metrics = m
		bound, stop, err := serveMetrics(addr, reg)
		if err != nil {
			return err
		}
		defer stop()
		fmt.Fprintf(c.App.ErrWriter, "metrics on http://%s/metrics\n", bound)
	}

	ex, err := sweepEngine.NewExecutor(ctx, s)
	if err != nil {
		return fmt.Errorf("start executor: %w", err)
	}
	if cl, ok := ex.(io.Closer); ok {
		defer cl.Close()
	}
	fmt.Fprintf(stderr, "sweep %s: %d configurations x %d prompts, %d repeats + %d warm-up -> %s\n",
		s.Name, len(s.Configs()), len(s.Prompts), s.Repeats, s.Warmup, dir)
	out, runErr := experiments.Execute(ctx, ex, s, opts)
	fmt.Fprintf(stderr, "%d runs done (%d failed), %d skipped as already done, of %d planned\n", out.Ran, out.Failed, out.Skipped, out.Planned)

	if !c.Bool("no-report") && (out.Ran > 0 || out.Skipped > 0) {
		b, err := results.Build(dir, results.BuildOptions{})
		if err != nil {
			return errors.Join(runErr, fmt.Errorf("build report: %w", err))
		}
		fmt.Fprintf(stderr, "report: %s (%d plots", filepath.Join(dir, results.ReportFile), len(b.Plots.Figures))
		if len(b.Plots.Skipped) > 0 {
			fmt.Fprintf(stderr, ", %d skipped for lack of data", len(b.Plots.Skipped))
		}
		fmt.Fprintln(stderr, ")")
	}
	switch {
	case out.Interrupted:
		return cli.Exit(fmt.Sprintf("interrupted: continue with hippo sweep --resume %s", dir), 130)
	case runErr != nil:
		return runErr
	case out.Failed > 0 && c.Bool("fail-on-error"):
		return cli.Exit(fmt.Sprintf("%d runs failed (see %s)", out.Failed, filepath.Join(dir, results.ReportFile)), 1)
	}
	return nil
}

// newRunDir returns root/<timestamp>, made unique if a sweep started in the same second.
func newRunDir(root string) string {
	stamp := time.Now().Format("20060102-150405")
	dir := filepath.Join(root, stamp)
	for i := 2; ; i++ {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return dir
		}
		dir = filepath.Join(root, fmt.Sprintf("%s-%d", stamp, i))
	}
}

// handleSignals makes the first SIGINT/SIGTERM stop the sweep after the current run, the second
// abort that run, and the third exit at once.
func handleSignals(cancel context.CancelFunc, abort chan struct{}, w io.Writer) (stop func()) {
	ch := make(chan os.Signal, 3)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		n := 0
		for {
			select {
			case <-done:
				return
			case <-ch:
				n++
				switch n {
				case 1:
					fmt.Fprintln(w, "\nstopping after the current run (Ctrl-C again to abort it)")
					cancel()
				case 2:
					fmt.Fprintln(w, "\naborting the current run")
					close(abort)
				default:
					os.Exit(130)
				}
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// serveMetrics serves reg on addr/metrics until stop is called; bound is the address it listens on.
func serveMetrics(addr string, reg *prometheus.Registry) (bound net.Addr, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return ln.Addr(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

func printPlan(w io.Writer, s *experiments.Sweep) error {
	cfgs := s.Configs()
	fmt.Fprintf(w, "sweep %s (%s)\n", s.Name, s.Path)
	if s.Description != "" {
		fmt.Fprintf(w, "%s\n", s.Description)
	}
	fmt.Fprintf(w, "\n%d configurations x %d prompts x %d repeats, plus %d warm-up runs per configuration: %d runs, timeout %s each\n\n",
		len(cfgs), len(s.Prompts), s.Repeats, s.Warmup, len(s.Plan()), s.Timeout)
	// The draft confidence gets a column only in sweeps that set one.
	gated := slices.ContainsFunc(cfgs, func(c bench.Config) bool { return c.DraftConfidence != 0 })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "#\tmodel\tmode\tstages\tlink\ttransport\tdrafter\tdraft_tokens\t")
	if gated {
		fmt.Fprint(tw, "draft_confidence\t")
	}
	fmt.Fprintln(tw, "max_tokens\ttemperature\t")
	for i, c := range cfgs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t", i+1, c.Model, c.Mode, dash(c.Stages), dashS(c.Link), dashS(c.Transport),
			dashS(c.Drafter), dash(c.DraftTokens))
		if gated {
			conf := "-"
			if c.DraftConfidence != 0 {
				conf = strconv.FormatFloat(c.DraftConfidence, 'g', -1, 64)
			}
			fmt.Fprintf(tw, "%s\t", conf)
		}
		fmt.Fprintf(tw, "%s\t%g\t\n", dash(c.MaxTokens), c.Temperature)
	}
	return tw.Flush()
}

func dash(i int) string {
	if i == 0 {
		return "-"
	}
	return fmt.Sprint(i)
}

func dashS(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plotCommand() *cli.Command {
	return &cli.Command{
		Name:      "plot",
		Usage:     "redraw a sweep's plots (PNG and SVG) from its runs.jsonl",
		ArgsUsage: "DIR",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "write the plots to `DIR` instead of the sweep directory"},
		},
		Action: func(c *cli.Context) error {
			dir, err := oneDir(c)
			if err != nil {
				return err
			}
			b, err := results.Build(dir, results.BuildOptions{Out: c.String("out"), PlotsOnly: true})
			if err != nil {
				return err
			}
			printPlots(c.App.Writer, b.Plots)
			return nil
		},
	}
}

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:      "report",
		Usage:     "rebuild a sweep's summary.csv, plots and report.md from its runs.jsonl",
		ArgsUsage: "DIR",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "write to `DIR` instead of the sweep directory"},
		},
		Action: func(c *cli.Context) error {
			dir, err := oneDir(c)
			if err != nil {
				return err
			}
			b, err := results.Build(dir, results.BuildOptions{Out: c.String("out")})
			if err != nil {
				return err
			}
			out := c.String("out")
			if out == "" {
				out = dir
			}
			fmt.Fprintf(c.App.Writer, "%d configurations from %d records\n", len(b.Summaries), len(b.Records))
			printPlots(c.App.Writer, b.Plots)
			fmt.Fprintf(c.App.Writer, "wrote %s and %s\n", filepath.Join(out, results.SummaryFile), filepath.Join(out, results.ReportFile))
			return nil
		},
	}
}

func oneDir(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s takes one sweep directory (the one holding runs.jsonl), got %d arguments", c.Command.Name, c.NArg())
	}
	return c.Args().First(), nil
}

func printPlots(w io.Writer, p results.Plots) {
	for _, f := range p.Figures {
		fmt.Fprintf(w, "plot %s: %s\n", f.Name, strings.Join(f.Files, ", "))
	}
	for _, s := range p.Skipped {
		fmt.Fprintf(w, "skipped %s: %s\n", s.Name, s.Reason)
	}
}

func compareCommand() *cli.Command {
	return &cli.Command{
		Name:      "compare",
		Usage:     "compare decode tok/s of two sweeps per configuration (ratio B/A, Welch's t-test)",
		ArgsUsage: "DIR_A DIR_B",
		Flags: []cli.Flag{
			&cli.Float64Flag{Name: "alpha", Value: 0.05, Usage: "significance level marked with *"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return fmt.Errorf("compare takes two sweep directories, got %d arguments", c.NArg())
			}
			a, b := c.Args().Get(0), c.Args().Get(1)
			cs, err := results.CompareDirs(a, b)
			if err != nil {
				return err
			}
			w := c.App.Writer
			for _, side := range []struct{ name, dir string }{{"A", a}, {"B", b}} {
				recs, err := results.ReadRuns(filepath.Join(side.dir, results.RunsFile))
				if err != nil {
					return err
				}
				envs := results.Environments(recs)
				desc := "no runs"
				if len(envs) > 0 {
					e := envs[0].Env
					desc = fmt.Sprintf("%s, %s/%s, commit %s, MLX %s", e.Host, e.OS, e.Arch, dashS(e.GitCommit), dashS(e.MLXVersion))
				}
				fmt.Fprintf(w, "%s: %s (%s)\n", side.name, side.dir, desc)
			}
			fmt.Fprintln(w)
			return results.WriteComparison(w, cs, c.Float64("alpha"))
		},
	}
}
