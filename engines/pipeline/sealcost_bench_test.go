//go:build hippobench

package pipeline

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"gonum.org/v1/gonum/stat"
	"gonum.org/v1/gonum/stat/distuv"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
	"github.com/hippo-bench/hippo/transport"
)

func init() { unseal, timeSeal = transport.Unsealed, transport.TimeSealing }

// sealStepTokens is how many tokens each side decodes per round.
const sealStepTokens = 9

// BenchmarkSealStep measures what sealing (AES-256-GCM on every frame) costs a real pipeline
// decode step, end to end: two 2-stage pipelines of the same model run side by side in this
// process, one sealed and one in the clear (possible only in this hippobench build), each a
// driver and a rank on loopback TCP shaped by the link profile. Each b.N is one round: both
// decode sealStepTokens tokens greedily from the same prompt with their steps alternating one by
// one (which side starts, and which of two pipelines of each kind runs, alternate from round to
// round), so that the two steps of a pair run within
// milliseconds of each other under the same machine load. A pair's ratio is the sealed step's
// time over the plain one's, a round's the geometric mean of its pairs'. It reports both medians
// (ms/step), the median overhead over rounds with its 95% distribution-free interval (order
// statistics), and the geometric mean overhead with its 95% t interval (on log ratios). It also
// times the AES-GCM calls themselves in the sealed pipelines (both ends): their time per step and
// share of the step, a direct figure that load on a shared machine cannot blur as it blurs the
// difference of two step times. Run it with -benchtime 100x or more; HIPPO_SEAL_PRESET picks the synth
// preset (default tiny-qwen3).
func BenchmarkSealStep(b *testing.B) {
	preset := os.Getenv("HIPPO_SEAL_PRESET")
	if preset == "" {
		preset = "tiny-qwen3"
	}
	dir := synthesizeBench(b, preset)
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		b.Fatal(err)
	}
	fp, err := model.Fingerprint(dir)
	if err != nil {
		b.Fatal(err)
	}
	// HIPPO_SEAL_CONTROL=1 seals both pipelines: an A/A control whose overhead must come out
	// near 0, which checks that the pairing itself favours neither side.
	control := os.Getenv("HIPPO_SEAL_CONTROL") == "1"
	half := cfg.NumLayers / 2
	split := []model.Range{{From: 0, To: half}, {From: half, To: cfg.NumLayers}}
	req := engines.Request{Tokens: []int{1, 2, 3, 4, 5, 6, 7}, MaxTokens: sealStepTokens, IgnoreEOS: true}
	for _, link := range []string{"loopback", "thunderbolt"} {
		b.Run(link, func(b *testing.B) {
			prof, err := transport.ParseProfile(link)
			if err != nil {
				b.Fatal(err)
			}
			// Two pipelines of each kind, opened sealed, plain, plain, sealed: round i uses pair
			// i%2, so that neither kind is always the one opened first (which the A/A control
			// showed can cost a few percent on a loaded machine).
			var spent atomic.Int64 // sealing and opening in the sealed pipelines, both ends
			var pairs [2]map[bool]*Driver
			pairs[0], pairs[1] = map[bool]*Driver{}, map[bool]*Driver{}
			for _, o := range []struct {
				pair   int
				sealed bool
			}{{0, true}, {0, false}, {1, false}, {1, true}} {
				plan := Plan{Model: dir, DType: "f32", Split: split, Fingerprint: fp, Layers: cfg.NumLayers, Link: prof, Context: 256, unsealed: !o.sealed && !control}
				if o.sealed {
					plan.sealTime = &spent
				}
				pairs[o.pair][o.sealed] = openBenchPipeline(b, plan)
			}
			// round decodes on both pipelines with their steps interleaved one by one (a baton
			// passes between them at every token), first first, and returns each step's time per
			// side: the driver's forward, the round trip through stage 1 and sampling, which is
			// all of a lockstep decode step and holds every seal and open of its frames.
			round := func(drivers map[bool]*Driver, first bool) map[bool][]float64 {
				// Each side appends to its own slice; the baton orders the two goroutines.
				var sealedSteps, plainSteps []float64
				mine := map[bool]*[]float64{true: &sealedSteps, false: &plainSteps}
				turn := map[bool]chan struct{}{true: make(chan struct{}, 1), false: make(chan struct{}, 1)}
				pass := func(to bool) {
					select {
					case turn[to] <- struct{}{}:
					default: // it holds one already
					}
				}
				// finished marks a side whose generation ended (also by an error), so that the
				// other no longer waits for it.
				finished := map[bool]*atomic.Bool{true: new(atomic.Bool), false: new(atomic.Bool)}
				errs := make(chan error, 2)
				for _, sealed := range []bool{true, false} {
					go func() {
						<-turn[sealed]
						n := 0
						_, err := drivers[sealed].Generate(context.Background(), req, func(t engines.Token) error {
							if n++; n > 1 { // the first token's step is the prefill
								*mine[sealed] = append(*mine[sealed], float64((t.Step.Forward+t.Step.Network+t.Step.Sample).Nanoseconds())/1e6)
							}
							pass(!sealed)
							if n < req.MaxTokens && !finished[!sealed].Load() {
								<-turn[sealed]
							}
							return nil
						})
						finished[sealed].Store(true)
						pass(!sealed)
						if err != nil {
							err = fmt.Errorf("%s pipeline: %w", map[bool]string{true: "sealed", false: "plain"}[sealed], err)
						}
						errs <- err
					}()
				}
				pass(first)
				// Both generations end before anything fails the benchmark, whose cleanup closes
				// the pipelines.
				var failed error
				for range 2 {
					if err := <-errs; err != nil && failed == nil {
						failed = err
					}
				}
				if failed != nil {
					b.Fatal(failed)
				}
				return map[bool][]float64{true: sealedSteps, false: plainSteps}
			}
			round(pairs[0], true) // warm up all four
			round(pairs[1], false)
			var sealedMS, plainMS, ratio []float64
			spent.Store(0)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				steps := round(pairs[i%2], i/2%2 == 0)
				// A round's ratio is the geometric mean of its step pairs' ratios: the pairs of
				// one round share a pipeline pair and the machine's state, so they are not
				// independent samples, and the intervals below are taken over rounds.
				var logSum float64
				n := min(len(steps[true]), len(steps[false]))
				for k := range n {
					s, p := steps[true][k], steps[false][k]
					sealedMS, plainMS = append(sealedMS, s), append(plainMS, p)
					logSum += math.Log(s / p)
				}
				ratio = append(ratio, math.Exp(logSum/float64(n)))
			}
			b.StopTimer()
			med, lo, hi := medianCI(ratio)
			// The mean is taken of log ratios (a geometric mean): a load spike on either side
			// then pulls it as far one way as the other, where a plain mean of ratios leans
			// towards whichever side is slower.
			logs := make([]float64, len(ratio))
			for i, r := range ratio {
				logs[i] = math.Log(r)
			}
			mean, std := stat.MeanStdDev(logs, nil)
			h := math.NaN()
			if n := float64(len(logs)); n > 1 {
				h = distuv.StudentsT{Mu: 0, Sigma: 1, Nu: n - 1}.Quantile(0.975) * std / math.Sqrt(n)
			}
			// What the sealed steps spent in AES-GCM itself, both ends, per step (an upper bound:
			// the prefill and reset frames of each round count too).
			var sealedTotal float64
			for _, x := range sealedMS {
				sealedTotal += x
			}
			sealUS := float64(spent.Load()) / 1e3 / float64(len(sealedMS))
			sealShare := 100 * float64(spent.Load()) / 1e6 / sealedTotal
			b.ReportMetric(sealUS, "seal-us/step")
			b.ReportMetric(sealShare, "seal-share-%")
			ms, _, _ := medianCI(sealedMS)
			mp, _, _ := medianCI(plainMS)
			b.ReportMetric(ms, "sealed-ms/step")
			b.ReportMetric(mp, "plain-ms/step")
			b.ReportMetric(100*(med-1), "median-overhead-%")
			b.ReportMetric(100*(lo-1), "ci95-lo-%")
			b.ReportMetric(100*(hi-1), "ci95-hi-%")
			b.ReportMetric(100*(math.Exp(mean)-1), "geomean-overhead-%")
			b.ReportMetric(0, "ns/op")
			what := "sealed vs plain"
			if control {
				what = "A/A control, both sealed"
			}
			b.Logf("%s, %s, %s, %d rounds of %d step pairs: sealed %.3f ms/step, plain %.3f ms/step (medians); overhead median %+.2f%% [95%% CI %+.2f%%, %+.2f%%], geometric mean %+.2f%% [95%% CI %+.2f%%, %+.2f%%]",
				what, preset, link, b.N, sealStepTokens-1, ms, mp, 100*(med-1), 100*(lo-1), 100*(hi-1),
				100*(math.Exp(mean)-1), 100*(math.Exp(mean-h)-1), 100*(math.Exp(mean+h)-1))
			b.Logf("time inside AES-GCM seal and open, both ends: %.1f us per sealed step, %.3f%% of its time (upper bound)", sealUS, sealShare)
		})
	}
}

// medianCI returns the median of xs and a distribution-free 95% interval for it: the order
// statistics whose ranks bracket n/2 by 1.96 sqrt(n)/2 (the normal approximation of the
// binomial), or the extremes for small n.
func medianCI(xs []float64) (med, lo, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	d := 1.96 * math.Sqrt(float64(n)) / 2
	l := max(int(math.Floor(float64(n)/2-d)), 0)
	u := min(int(math.Ceil(float64(n)/2+d)), n-1)
	return med, s[l], s[u]
}

func synthesizeBench(b *testing.B, preset string) string {
	b.Helper()
	p, err := synth.Lookup(preset)
	if err != nil {
		b.Fatal(err)
	}
	o := synth.Options{Preset: preset, Seed: 5, Out: b.TempDir(), Tokenizer: testenv.Tokenizer(b, synth.TokenizerFor(p.Arch))}
	w := mlx.NewWorker()
	defer w.Close()
	if err := w.Do(context.Background(), func() error { _, err := synth.Write(o); return err }); err != nil {
		b.Fatal(err)
	}
	return o.Out
}

// openBenchPipeline serves stage 1 of plan in this process and opens its driver.
func openBenchPipeline(b *testing.B, plan Plan) *Driver {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Rank{Plan: plan, Stage: 1}
	ln, err := r.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, ln) }()
	dctx, dcancel := context.WithTimeout(ctx, time.Minute)
	defer dcancel()
	d, err := OpenDriver(dctx, plan, ln.Addr().String())
	if err != nil {
		b.Fatal(fmt.Errorf("open the %v pipeline: %w", map[bool]string{true: "plain", false: "sealed"}[plan.unsealed], err))
	}
	b.Cleanup(func() {
		d.Close()
		cancel()
		ln.Close()
		<-done
	})
	return d
}
