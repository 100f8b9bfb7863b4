package experiments

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hippo-bench/hippo/results"
)

// Metrics exposes a sweep's progress and its per-step latencies to Prometheus. Create it with
// NewMetrics on a registry you own; pass it in RunOptions. Methods are safe for concurrent use.
type Metrics struct {
	planned   prometheus.Gauge
	remaining prometheus.Gauge
	done      prometheus.Counter
	failed    prometheus.Counter
	skipped   prometheus.Counter
	forward   *prometheus.HistogramVec
	network   *prometheus.HistogramVec
	hop       *prometheus.HistogramVec
	sample    *prometheus.HistogramVec
	draft     *prometheus.HistogramVec
}

// NewMetrics registers the sweep metrics with reg:
//
//	hippo_sweep_runs_planned            gauge: runs in the sweep, warm-ups included
//	hippo_sweep_runs_remaining          gauge: runs this process has still to execute
//	hippo_sweep_runs_done_total         counter: runs finished by this process (failed included)
//	hippo_sweep_runs_failed_total       counter: runs that failed
//	hippo_sweep_runs_skipped_total      counter: runs skipped because a resumed directory had them
//	hippo_sweep_step_{forward,network,sample,draft}_seconds{mode,link}
//	                                    histograms of per-step times of measured runs
//	hippo_sweep_step_hop_network_seconds{mode,link,hop}
//	                                    time on the wire per step and hop ("0" is stage 0 to 1),
//	                                    where the transport times each hop
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	buckets := prometheus.ExponentialBuckets(0.0001, 2, 18) // 0.1 ms .. 13 s
	hist := func(name, help string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "hippo", Subsystem: "sweep", Name: name, Help: help, Buckets: buckets,
		}, []string{"mode", "link"})
	}
	m := &Metrics{
		planned:   prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "hippo", Subsystem: "sweep", Name: "runs_planned", Help: "Runs in the sweep, warm-ups included."}),
		remaining: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "hippo", Subsystem: "sweep", Name: "runs_remaining", Help: "Runs this process has still to execute."}),
		done:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: "hippo", Subsystem: "sweep", Name: "runs_done_total", Help: "Runs finished by this process, failed ones included."}),
		failed:    prometheus.NewCounter(prometheus.CounterOpts{Namespace: "hippo", Subsystem: "sweep", Name: "runs_failed_total", Help: "Runs that failed."}),
		skipped:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: "hippo", Subsystem: "sweep", Name: "runs_skipped_total", Help: "Runs skipped because the resumed directory already had them."}),
		forward:   hist("step_forward_seconds", "Model forward time per decode step (all stages)."),
		network:   hist("step_network_seconds", "Time on the wire per decode step (all hops)."),
		sample:    hist("step_sample_seconds", "Sampling time per decode step."),
		draft:     hist("step_draft_seconds", "Drafting time per decode step."),
		hop: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "hippo", Subsystem: "sweep", Name: "step_hop_network_seconds", Help: "Time on the wire per decode step and hop (stage hop to hop+1 and back).", Buckets: buckets,
		}, []string{"mode", "link", "hop"}),
	}
	for _, c := range []prometheus.Collector{m.planned, m.remaining, m.done, m.failed, m.skipped, m.forward, m.network, m.hop, m.sample, m.draft} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) start(planned, skipped, remaining int) {
	if m == nil {
		return
	}
	m.planned.Set(float64(planned))
	m.skipped.Add(float64(skipped))
	m.remaining.Set(float64(remaining))
}

func (m *Metrics) finished(r *results.Record) {
	if m == nil {
		return
	}
	m.done.Inc()
	m.remaining.Dec()
	if !r.OK() {
		m.failed.Inc()
		return
	}
	if r.Warmup {
		return
	}
	link := r.Config.Link
	if link == "" {
		link = "local"
	}
	l := prometheus.Labels{"mode": r.Config.Mode, "link": link}
	fwd, net, smp, drf := m.forward.With(l), m.network.With(l), m.sample.With(l), m.draft.With(l)
	for _, st := range r.Result.Steps {
		fwd.Observe(st.ForwardMS / 1e3)
		smp.Observe(st.SampleMS / 1e3)
		if st.NetworkMS > 0 {
			net.Observe(st.NetworkMS / 1e3)
		}
		if st.DraftMS > 0 {
			drf.Observe(st.DraftMS / 1e3)
		}
		for k, h := range st.HopNetworkMS {
			m.hop.With(prometheus.Labels{"mode": r.Config.Mode, "link": link, "hop": strconv.Itoa(k)}).Observe(h / 1e3)
		}
	}
}
