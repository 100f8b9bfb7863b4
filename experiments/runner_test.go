package experiments

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/results"
)

func TestMain(m *testing.M) {
	if os.Getenv("HIPPO_SWEEP_HELPER") == "1" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

// helperMain is the child process of TestResumeAfterKill: it resumes the sweep in
// $HIPPO_SWEEP_DIR with a fake executor.
func helperMain() int {
	s, err := Load(os.Getenv("HIPPO_SWEEP_FILE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ex := &fakeExecutor{sleep: 4 * time.Millisecond}
	if _, err := Execute(context.Background(), ex, s, RunOptions{Dir: os.Getenv("HIPPO_SWEEP_DIR"), Resume: true}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

const resumeSweep = `
name: resume
repeats: 5
warmup: 1
prompts: [alpha, beta]
matrix:
  model: synth:tiny-qwen3
  mode: [standalone, pipeline, spec]
  stages: 2
  drafter: lookup
  draft_tokens: 2
  max_tokens: [4, 8]
`

func measuredIDs(s *Sweep) map[string]bool {
	ids := map[string]bool{}
	for _, r := range s.Plan() {
		if !r.Warmup {
			ids[r.ID] = true
		}
	}
	return ids
}

// TestResumeAfterKill is invariant 5: a sweep killed at any moment and resumed loses no completed
// run and duplicates none.
func TestResumeAfterKill(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "resume.yaml")
	if err := os.WriteFile(file, []byte(resumeSweep), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	runs := filepath.Join(out, results.RunsFile)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	child := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "HIPPO_SWEEP_HELPER=1", "HIPPO_SWEEP_FILE="+file, "HIPPO_SWEEP_DIR="+out)
		cmd.Stderr = os.Stderr
		return cmd
	}
	var before []results.Record
	kills := 0
	for attempt := 0; attempt < 12; attempt++ {
		cmd := child()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The whole sweep takes over 260 ms; kill somewhere in its first 100.
		time.Sleep(time.Duration(5+rng.IntN(95)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		if err := cmd.Wait(); err == nil {
			break // it finished before the kill
		} else if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("helper failed on its own: %v", err)
		}
		kills++
		recs, err := results.ReadRuns(runs)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("after kill %d: %v", kills, err)
		}
		if len(recs) < len(before) {
			t.Fatalf("after kill %d: %d records; had %d before", kills, len(recs), len(before))
		}
		if diff := cmp.Diff(before, recs[:len(before)], cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("after kill %d: earlier records changed:\n%s", kills, diff)
		}
		before = recs
		if _, err := os.Stat(out); attempt%2 == 1 && err == nil {
			// Simulate a kill in the middle of a write: half a line, no newline. Only once the
			// sweep has made its directory: a kill before that leaves nothing to tear.
			f, err := os.OpenFile(runs, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(`{"id":"0123456789abcdef","sweep":"resume","config":{"model":"synth:ti`)
			f.Close()
		}
	}
	t.Logf("killed %d times; %d records before the final run", kills, len(before))
	if kills < 3 {
		t.Errorf("the sweep was killed only %d times; the test needs it killed at several points", kills)
	}
	cmd := child()
	if err := cmd.Run(); err != nil {
		t.Fatalf("final resume: %v", err)
	}

	recs, err := results.ReadRuns(runs)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, recs[:len(before)], cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("final run changed earlier records:\n%s", diff)
	}
	want := measuredIDs(s)
	count := map[string]int{}
	for _, r := range recs {
		if r.Warmup {
			continue
		}
		if !want[r.ID] {
			t.Errorf("record %s is not in the plan", r.ID)
		}
		if !r.OK() {
			t.Errorf("record %s failed: %s", r.ID, r.Error)
		}
		count[r.ID]++
	}
	for id := range want {
		if count[id] != 1 {
			t.Errorf("run %s recorded %d times; want exactly once", id, count[id])
		}
	}
}

func quickSweep(t *testing.T, set ...string) *Sweep {
	t.Helper()
	s, err := Load("quick.yaml", set...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestExecuteRecordsFailuresAndGoesOn(t *testing.T) {
	s := quickSweep(t)
	dir := t.TempDir()
	ex := &fakeExecutor{fail: map[string]bool{"pipeline": true}}
	var log strings.Builder
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	env := results.Env{Host: "test", OS: "linux"}
	linkParams := func(link string) map[string]any { return map[string]any{"rtt_ms": 0.05, "name": link} }
	out, err := Execute(context.Background(), ex, s, RunOptions{Dir: dir, Log: &log, Metrics: m, Env: env, LinkParams: linkParams})
	if err != nil {
		t.Fatal(err)
	}
	want := Outcome{Planned: 6, Ran: 6, Failed: 3}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("Outcome mismatch (-want +got):\n%s", diff)
	}
	recs, err := results.ReadRuns(filepath.Join(dir, results.RunsFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 6 {
		t.Fatalf("%d records; want 6", len(recs))
	}
	plan := s.Plan()
	for i, r := range recs {
		if r.ID != plan[i].ID || r.Warmup != plan[i].Warmup || r.Repeat != plan[i].Repeat || r.Sweep != "quick" {
			t.Errorf("record %d = %s warmup=%t repeat=%d; want %s warmup=%t repeat=%d", i, r.ID, r.Warmup, r.Repeat, plan[i].ID, plan[i].Warmup, plan[i].Repeat)
		}
		switch r.Config.Mode {
		case "pipeline":
			if r.OK() || r.Error != errUnsupported.Error() {
				t.Errorf("pipeline record %d: ok=%t error=%q; want the executor's error", i, r.OK(), r.Error)
			}
			if r.Env.Link["name"] != "loopback" {
				t.Errorf("pipeline record env.link = %v; want the loopback parameters", r.Env.Link)
			}
		default:
			if !r.OK() || r.Result.DecodeTokS <= 0 || len(r.Result.Steps) == 0 {
				t.Errorf("standalone record %d: ok=%t; want a result", i, r.OK())
			}
		}
		if r.Env.Host != "test" || r.Started.IsZero() || r.ElapsedMS < 0 {
			t.Errorf("record %d: env/started/elapsed = %+v %v %v", i, r.Env, r.Started, r.ElapsedMS)
		}
	}
	if !strings.Contains(log.String(), "[6/6] FAIL pipeline repeat 1: fake: mode not supported") {
		t.Errorf("log does not report the failure:\n%s", log.String())
	}
	if _, err := os.Stat(filepath.Join(dir, FlatFile)); err != nil {
		t.Errorf("no %s: %v", FlatFile, err)
	}

	if got := testutil.ToFloat64(m.done); got != 6 {
		t.Errorf("runs_done_total = %v; want 6", got)
	}
	if got := testutil.ToFloat64(m.failed); got != 3 {
		t.Errorf("runs_failed_total = %v; want 3", got)
	}
	if got := testutil.ToFloat64(m.remaining); got != 0 {
		t.Errorf("runs_remaining = %v; want 0", got)
	}
	// Two measured standalone runs of 16 one-token steps each.
	if got := testutil.CollectAndCount(m.forward, "hippo_sweep_step_forward_seconds"); got != 1 {
		t.Errorf("forward histogram has %d series; want 1 (standalone, local)", got)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP hippo_sweep_runs_planned Runs in the sweep, warm-ups included.
# TYPE hippo_sweep_runs_planned gauge
hippo_sweep_runs_planned 6
`), "hippo_sweep_runs_planned"); err != nil {
		t.Error(err)
	}

	// Resuming re-runs only the failed pipeline runs (with their warm-up).
	ex2 := &fakeExecutor{}
	out, err = Execute(context.Background(), ex2, s, RunOptions{Dir: dir, Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	want = Outcome{Planned: 6, Skipped: 2, Ran: 3}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("resume Outcome mismatch (-want +got):\n%s", diff)
	}
	for _, c := range ex2.runs {
		if c.Mode != "pipeline" {
			t.Errorf("resume ran %s; want only pipeline runs", c.Mode)
		}
	}
	recs, _ = results.ReadRuns(filepath.Join(dir, results.RunsFile))
	if got := len(results.Summarize(recs)); got != 2 {
		t.Errorf("%d summaries after resume; want 2", got)
	}
}

func TestExecuteRefusesExistingDirWithoutResume(t *testing.T) {
	s := quickSweep(t, "repeats=1", "warmup=0")
	dir := t.TempDir()
	if _, err := Execute(context.Background(), &fakeExecutor{}, s, RunOptions{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	_, err := Execute(context.Background(), &fakeExecutor{}, s, RunOptions{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Errorf("second Execute without Resume = %v; want an error suggesting --resume", err)
	}
}

func TestExecuteInterruptFinishesCurrentRun(t *testing.T) {
	s := quickSweep(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ex := &cancelAfter{n: 2, cancel: cancel, inner: &fakeExecutor{sleep: 20 * time.Millisecond}}
	out, err := Execute(ctx, ex, s, RunOptions{Dir: dir})
	if !errors.Is(err, context.Canceled) || !out.Interrupted {
		t.Fatalf("Execute = %+v, %v; want Interrupted and context.Canceled", out, err)
	}
	recs, err := results.ReadRuns(filepath.Join(dir, results.RunsFile))
	if err != nil {
		t.Fatal(err)
	}
	// The second run saw the cancellation mid-flight, finished anyway and was recorded.
	if len(recs) != 2 || !recs[1].OK() {
		t.Fatalf("%d records (last ok=%t); want 2, all successful", len(recs), len(recs) > 1 && recs[1].OK())
	}
}

// cancelAfter cancels the sweep's context while its n-th run is in flight.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
	inner  Executor
	calls  int
}

func (c *cancelAfter) Run(ctx context.Context, cfg bench.Config) (bench.Result, error) {
	c.calls++
	if c.calls == c.n {
		c.cancel()
	}
	return c.inner.Run(ctx, cfg)
}

func TestExecuteTimeout(t *testing.T) {
	s := quickSweep(t, "timeout=20ms", "repeats=1", "warmup=0")
	dir := t.TempDir()
	out, err := Execute(context.Background(), &fakeExecutor{block: true}, s, RunOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if out.Failed != 2 {
		t.Errorf("Failed = %d; want 2", out.Failed)
	}
	recs, _ := results.ReadRuns(filepath.Join(dir, results.RunsFile))
	for _, r := range recs {
		if !strings.Contains(r.Error, "timed out after 20ms") {
			t.Errorf("record error = %q; want a timeout", r.Error)
		}
	}
}

func TestExecuteStuckExecutor(t *testing.T) {
	s := quickSweep(t, "timeout=10ms", "repeats=1", "warmup=0")
	dir := t.TempDir()
	out, err := Execute(context.Background(), &fakeExecutor{ignoreCtx: true}, s, RunOptions{Dir: dir, Grace: 20 * time.Millisecond})
	if !errors.Is(err, ErrStuck) {
		t.Fatalf("Execute error = %v; want ErrStuck", err)
	}
	if out.Ran != 1 || out.Failed != 1 {
		t.Errorf("Outcome = %+v; want the stuck run recorded as failed and the sweep stopped", out)
	}
}

func TestExecuteAbort(t *testing.T) {
	s := quickSweep(t, "repeats=1", "warmup=0")
	dir := t.TempDir()
	abort := make(chan struct{})
	time.AfterFunc(20*time.Millisecond, func() { close(abort) })
	out, err := Execute(context.Background(), &fakeExecutor{block: true}, s, RunOptions{Dir: dir, Abort: abort})
	if !errors.Is(err, context.Canceled) || !out.Interrupted || out.Ran != 0 {
		t.Fatalf("Execute = %+v, %v; want interrupted with nothing recorded", out, err)
	}
	recs, _ := results.ReadRuns(filepath.Join(dir, results.RunsFile))
	if len(recs) != 0 {
		t.Errorf("%d records; an aborted run must not be recorded", len(recs))
	}
}

func TestExecuteProgressBar(t *testing.T) {
	s := quickSweep(t, "repeats=1", "warmup=0")
	var bar strings.Builder
	if _, err := Execute(context.Background(), &fakeExecutor{}, s, RunOptions{Dir: t.TempDir(), Progress: &bar}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(bar.String(), "2/2") {
		t.Errorf("progress output %q does not show 2/2", bar.String())
	}
}

func TestHostEnv(t *testing.T) {
	e := HostEnv(context.Background(), "0.32.4", "")
	if e.OS == "" || e.Arch == "" || e.GoVersion == "" || e.MLXVersion != "0.32.4" || e.CPUs == 0 {
		t.Errorf("HostEnv = %+v; want OS, arch, Go and MLX versions, CPUs", e)
	}
}
