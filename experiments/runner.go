package experiments

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/results"
)

// Executor runs one configuration. Implementations may keep models loaded between calls (the
// runner orders runs so identical model/mode/stages are adjacent); those that hold resources also
// implement io.Closer, and whoever created the executor closes it (Execute does not). Execute
// calls Run from one goroutine at a time. Run must return when ctx is done (the run's timeout, or
// an abort); the result of a failed run may be partial and is not recorded.
type Executor interface {
	Run(ctx context.Context, c bench.Config) (bench.Result, error)
}

// FlatFile is the self-contained copy of the sweep (see Sweep.Flatten) written beside runs.jsonl.
const FlatFile = "sweep.yaml"

// ErrStuck reports an executor that ignored its context: it did not return within the grace period
// after its run timed out. The sweep stops, since the executor may still hold the engine.
var ErrStuck = errors.New("experiments: executor did not return after its run was cancelled")

// RunOptions configures Execute. Only Dir is required.
type RunOptions struct {
	// Dir receives runs.jsonl and sweep.yaml; it is created if needed.
	Dir string
	// Resume continues the runs.jsonl in Dir: runs that already succeeded are skipped and failed
	// or missing ones run. Without Resume, Dir must not hold any run yet.
	Resume bool
	// Env is recorded with every run; LinkParams, when set, fills Env.Link with the parameters of
	// each run's link profile.
	Env        results.Env
	LinkParams func(link string) map[string]any
	// Progress receives a progress bar with an ETA (use a terminal); Log receives one line per
	// finished run (use when there is no terminal). Either may be nil.
	Progress io.Writer
	Log      io.Writer
	// Metrics, when set, is updated as runs finish.
	Metrics *Metrics
	// Abort, when closed, cancels the run in flight; Execute then returns without recording it.
	// Cancelling Execute's ctx instead lets the run in flight finish first.
	Abort <-chan struct{}
	// Grace is how long to wait for an executor to return after its run's context is done before
	// giving up on it with ErrStuck. Zero means 10 seconds.
	Grace time.Duration
}

// Outcome counts what Execute did.
type Outcome struct {
	// Planned is every run of the sweep, warm-ups included; Skipped were already done in Dir.
	Planned int
	Skipped int
	// Ran is how many runs this call executed and recorded; Failed is how many of those failed.
	Ran    int
	Failed int
	// Interrupted is set when ctx was cancelled or Abort closed before the last run.
	Interrupted bool
}

// Execute runs the sweep with ex, appending one record per finished run to Dir/runs.jsonl (one
// JSON line each, fsynced before the next run starts). A failed or timed-out run is recorded and
// the sweep goes on. When ctx is cancelled (SIGINT), the run in flight finishes and is recorded,
// then Execute returns ctx's error with Outcome.Interrupted set; runs.jsonl stays valid. A process
// killed outright loses at most the run in flight and leaves at most a torn last line, which the
// next Execute with Resume cuts off.
func Execute(ctx context.Context, ex Executor, s *Sweep, opts RunOptions) (Outcome, error) {
	var out Outcome
	if opts.Dir == "" {
		return out, errors.New("experiments: RunOptions.Dir is empty")
	}
	if opts.Grace <= 0 {
		opts.Grace = 10 * time.Second
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return out, fmt.Errorf("create output directory: %w", err)
	}
	store, err := results.OpenStore(filepath.Join(opts.Dir, results.RunsFile))
	if err != nil {
		return out, err
	}
	defer store.Close()
	if n := len(store.Records()); n > 0 && !opts.Resume {
		return out, fmt.Errorf("%s already holds %d runs: pass --resume %s to continue it, or choose another --out", store.Path(), n, opts.Dir)
	}
	if flat, err := s.Flatten(); err == nil {
		if err := writeAtomic(filepath.Join(opts.Dir, FlatFile), flat); err != nil {
			return out, err
		}
	}

	done := map[string]bool{}
	for _, r := range store.Records() {
		if r.OK() && !r.Warmup {
			done[r.ID] = true
		}
	}
	plan := s.Plan()
	todo := pending(plan, done)
	out.Planned = len(plan)
	for _, r := range plan {
		if !r.Warmup && done[r.ID] {
			out.Skipped++
		}
	}
	opts.Metrics.start(len(plan), out.Skipped, len(todo))

	labels := map[string]string{}
	cfgs := s.Configs()
	for i, l := range results.Labels(cfgs) {
		labels[results.ConfigKey(cfgs[i])] = l
	}
	var bar *progressbar.ProgressBar
	if opts.Progress != nil && len(todo) > 0 {
		bar = progressbar.NewOptions(len(todo),
			progressbar.OptionSetWriter(opts.Progress),
			progressbar.OptionSetDescription(s.Name),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(opts.Progress) }),
		)
		defer bar.Exit()
	}

	for i, r := range todo {
		if ctx.Err() != nil {
			out.Interrupted = true
			return out, ctx.Err()
		}
		label := labels[results.ConfigKey(r.Config)]
		what := fmt.Sprintf("%s repeat %d", label, r.Repeat)
		if r.Warmup {
			what = fmt.Sprintf("%s warm-up %d", label, r.Repeat)
		}
		if bar != nil {
			bar.Describe(what)
		}
		rec, err := runOne(ctx, ex, s, r, opts)
		if errors.Is(err, errAborted) {
			out.Interrupted = true
			return out, context.Canceled
		}
		if rec.ID != "" {
			if aerr := store.Append(rec); aerr != nil {
				return out, aerr
			}
			out.Ran++
			if !rec.OK() {
				out.Failed++
			}
			opts.Metrics.finished(&rec)
			if bar != nil {
				_ = bar.Add(1)
			}
			if opts.Log != nil {
				status, detail := "FAIL", rec.Error
				if rec.OK() {
					status, detail = "ok  ", fmt.Sprintf("%.2f tok/s", rec.Result.DecodeTokS)
				}
				fmt.Fprintf(opts.Log, "[%d/%d] %s %s: %s (%.1fs)\n", i+1, len(todo), status, what, detail, rec.ElapsedMS/1e3)
			}
		}
		if err != nil {
			return out, err
		}
	}
	if bar != nil {
		_ = bar.Finish()
	}
	return out, nil
}

var errAborted = errors.New("aborted")

// runOne executes r and returns its record. It returns errAborted (and no record) when
// opts.Abort closed, and ErrStuck (with a record) when the executor ignored cancellation.
func runOne(ctx context.Context, ex Executor, s *Sweep, r Run, opts RunOptions) (results.Record, error) {
	rec := results.Record{ID: r.ID, Sweep: s.Name, Config: r.Config, Repeat: r.Repeat, Warmup: r.Warmup, Env: opts.Env}
	if opts.LinkParams != nil && r.Config.Link != "" {
		rec.Env.Link = opts.LinkParams(r.Config.Link)
	}
	// The run keeps going when ctx is cancelled (SIGINT finishes the current run); only its
	// timeout or an abort stops it.
	runCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.Timeout)
	defer cancel()
	aborted := make(chan struct{})
	if opts.Abort != nil {
		go func() {
			select {
			case <-opts.Abort:
				close(aborted)
				cancel()
			case <-runCtx.Done():
			}
		}()
	}
	type outcome struct {
		res bench.Result
		err error
	}
	ch := make(chan outcome, 1)
	rec.Started = time.Now().UTC()
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ch <- outcome{err: fmt.Errorf("executor panicked: %v\n%s", p, debug.Stack())}
			}
		}()
		res, err := ex.Run(runCtx, r.Config)
		ch <- outcome{res, err}
	}()
	var o outcome
	select {
	case o = <-ch:
	case <-runCtx.Done():
		select {
		case o = <-ch:
		case <-time.After(opts.Grace):
			if isClosed(aborted) {
				return results.Record{}, errAborted
			}
			rec.ElapsedMS = msSince(rec.Started)
			rec.Error = fmt.Sprintf("timed out after %s and the executor did not stop within %s", s.Timeout, opts.Grace)
			return rec, fmt.Errorf("run %s: %w", r.ID, ErrStuck)
		}
	}
	rec.ElapsedMS = msSince(rec.Started)
	if isClosed(aborted) {
		return results.Record{}, errAborted
	}
	switch {
	case o.err != nil && errors.Is(runCtx.Err(), context.DeadlineExceeded):
		rec.Error = fmt.Sprintf("timed out after %s: %v", s.Timeout, o.err)
	case o.err != nil:
		rec.Error = o.err.Error()
	default:
		res := o.res
		rec.Result = &res
	}
	return rec, nil
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func msSince(t time.Time) float64 { return float64(time.Since(t)) / float64(time.Millisecond) }

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
