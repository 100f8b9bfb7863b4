package serve

import (
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hippo-bench/hippo/engines"
)

// Metrics are the server's Prometheus collectors, all in base units (seconds, bytes). Every
// generation's decode steps feed them through ObserveStats, whatever the mode: per-stage forward
// time, per-hop network time (pipelines), sampling time, and drafted and accepted tokens by
// position (speculative modes).
//
// Occupancy is read at every scrape, per model:
//
//	hippo_batch_size{model}               sequences decoding now (0 when idle)
//	hippo_kv_cache_bytes{model}           KV cache those sequences hold
//	hippo_kv_cache_capacity_bytes{model}  KV cache the model may hold (context x batch bound)
//
// A Generator that runs several sequences at once reports them itself (Occupier); for any other
// the server counts its own calls, which it never overlaps: a batch of 1 while one runs.
type Metrics struct {
	Requests        *prometheus.CounterVec   // endpoint, code
	PromptTokens    *prometheus.CounterVec   // model
	GeneratedTokens *prometheus.CounterVec   // model
	TTFT            *prometheus.HistogramVec // model
	InterToken      *prometheus.HistogramVec // model
	RequestDuration *prometheus.HistogramVec // endpoint
	QueueWait       prometheus.Histogram
	Forward         *prometheus.HistogramVec // model, stage
	Sample          *prometheus.HistogramVec // model
	QueueDepth      prometheus.Gauge
	ModelMemory     *prometheus.GaugeVec // model
	BuildInfo       *prometheus.GaugeVec // version, revision, go_version

	// Pipeline: time on the wire per decode step and hop, remote forward time excluded.
	Network *prometheus.HistogramVec // model, hop
	// Speculative decoding: drafted and accepted tokens, in total and by draft position (0 is the
	// first drafted token), so acceptance by position is accepted/drafted per position.
	Drafted            *prometheus.CounterVec // model
	Accepted           *prometheus.CounterVec // model
	DraftedByPosition  *prometheus.CounterVec // model, position
	AcceptedByPosition *prometheus.CounterVec // model, position

	occupancy *occupancyCollector
}

// Latency buckets from 0.5 ms to ~65 s: decode steps on a laptop CPU are milliseconds to a second,
// prefill and whole requests are seconds.
var latencyBuckets = prometheus.ExponentialBuckets(0.0005, 2, 18)

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	hist := func(name, help string, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: latencyBuckets}, labels)
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &Metrics{
		Requests:        counter("hippo_requests_total", "HTTP requests by endpoint and status code (499: the client went away).", "endpoint", "code"),
		PromptTokens:    counter("hippo_prompt_tokens_total", "Prompt tokens processed.", "model"),
		GeneratedTokens: counter("hippo_generated_tokens_total", "Tokens generated.", "model"),
		TTFT:            hist("hippo_time_to_first_token_seconds", "Time from receiving a generation request to its first token, queueing included.", "model"),
		InterToken:      hist("hippo_inter_token_latency_seconds", "Wall time between consecutive generated tokens of a request.", "model"),
		RequestDuration: hist("hippo_request_duration_seconds", "Time to serve a request, from receipt to the last byte.", "endpoint"),
		QueueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hippo_queue_wait_seconds",
			Help: "Time a generation request waited for its model.", Buckets: latencyBuckets}),
		Forward: hist("hippo_forward_seconds", "Model forward time of one decode step per pipeline stage (0 when standalone): measured after evaluation in a pipeline; standalone, where steps are pipelined, the host time to build and enqueue the step.", "model", "stage"),
		Sample:  hist("hippo_sample_seconds", "Sampling time of one decode step; standalone, the time spent waiting for the step's token id (the device finishing the step).", "model"),
		QueueDepth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hippo_queue_depth",
			Help: "Generation requests waiting for a model."}),
		ModelMemory: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hippo_model_memory_bytes",
			Help: "Memory taken by a served model's weights."}, []string{"model"}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hippo_build_info",
			Help: "Always 1; labels identify the build."}, []string{"version", "revision", "go_version"}),
		Network:            hist("hippo_network_seconds", "Pipeline: time on the wire per decode step and hop, remote forward excluded.", "model", "hop"),
		Drafted:            counter("hippo_spec_drafted_tokens_total", "Speculative decoding: tokens drafted.", "model"),
		Accepted:           counter("hippo_spec_accepted_tokens_total", "Speculative decoding: drafted tokens the target accepted.", "model"),
		DraftedByPosition:  counter("hippo_spec_drafted_by_position_total", "Speculative decoding: drafts that reached each draft position.", "model", "position"),
		AcceptedByPosition: counter("hippo_spec_accepted_by_position_total", "Speculative decoding: drafts accepted at each draft position.", "model", "position"),
	}
	m.occupancy = &occupancyCollector{models: map[string]func() (int, int64, int64){}}
	reg.MustRegister(m.occupancy)
	reg.MustRegister(m.Requests, m.PromptTokens, m.GeneratedTokens, m.TTFT, m.InterToken, m.RequestDuration,
		m.QueueWait, m.Forward, m.Sample, m.QueueDepth, m.ModelMemory, m.BuildInfo,
		m.Network, m.Drafted, m.Accepted, m.DraftedByPosition, m.AcceptedByPosition)
	version, revision := buildVersion()
	m.BuildInfo.WithLabelValues(version, revision, runtime.Version()).Set(1)
	return m
}

// ObserveStats records the decode steps of one generation: forward time per stage ("0" when
// standalone), network time per hop, sampling time (not in speculative modes, whose steps sample
// nothing of their own), and what speculation drafted and accepted.
func (m *Metrics) ObserveStats(model string, st engines.Stats) {
	for _, s := range st.Steps {
		if len(s.StageForward) == 0 {
			m.Forward.WithLabelValues(model, "0").Observe(s.Forward.Seconds())
		}
		for k, f := range s.StageForward {
			m.Forward.WithLabelValues(model, strconv.Itoa(k)).Observe(f.Seconds())
		}
		for k, h := range s.Hops {
			m.ObserveNetwork(model, k, h)
		}
		switch n := len(s.StageForward); {
		case len(s.Hops) > 0:
		case n == 2:
			m.ObserveNetwork(model, 0, s.Network)
		case n > 2:
			// Over mlx-ring the stages report no hop times: the sum goes under hop "all".
			m.Network.WithLabelValues(model, "all").Observe(s.Network.Seconds())
		}
		if st.Spec == nil {
			m.Sample.WithLabelValues(model).Observe(s.Sample.Seconds())
		}
	}
	if st.Spec != nil {
		for _, s := range st.Spec.Steps {
			m.ObserveSpec(model, s.Drafted, s.Accepted)
		}
	}
}

// watch makes every scrape report model's occupancy as read by f (sequences decoding, KV bytes
// they hold, KV bytes available).
func (m *Metrics) watch(model string, f func() (running int, kvBytes, kvCapacity int64)) {
	m.occupancy.mu.Lock()
	defer m.occupancy.mu.Unlock()
	m.occupancy.models[model] = f
}

// occupancyCollector reads each model's occupancy at scrape time.
type occupancyCollector struct {
	mu     sync.Mutex
	models map[string]func() (int, int64, int64)
}

var (
	batchDesc = prometheus.NewDesc("hippo_batch_size", "Sequences of a model decoding now (0 when idle; 1 at most for a generator that runs one at a time).", []string{"model"}, nil)
	kvDesc    = prometheus.NewDesc("hippo_kv_cache_bytes", "KV cache held by the sequences decoding now.", []string{"model"}, nil)
	kvCapDesc = prometheus.NewDesc("hippo_kv_cache_capacity_bytes", "KV cache a model may hold: its context times the sequences it may decode at once.", []string{"model"}, nil)
)

func (c *occupancyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- batchDesc
	ch <- kvDesc
	ch <- kvCapDesc
}

func (c *occupancyCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for model, f := range c.models {
		running, kv, capacity := f()
		ch <- prometheus.MustNewConstMetric(batchDesc, prometheus.GaugeValue, float64(running), model)
		ch <- prometheus.MustNewConstMetric(kvDesc, prometheus.GaugeValue, float64(kv), model)
		ch <- prometheus.MustNewConstMetric(kvCapDesc, prometheus.GaugeValue, float64(capacity), model)
	}
}

// ObserveNetwork records the wire time of one hop of one pipeline decode step.
func (m *Metrics) ObserveNetwork(model string, hop int, d time.Duration) {
	m.Network.WithLabelValues(model, strconv.Itoa(hop)).Observe(d.Seconds())
}

// ObserveSpec records one speculative step: drafted tokens proposed, of which the first accepted
// were accepted.
func (m *Metrics) ObserveSpec(model string, drafted, accepted int) {
	m.Drafted.WithLabelValues(model).Add(float64(drafted))
	m.Accepted.WithLabelValues(model).Add(float64(accepted))
	for p := range drafted {
		pos := strconv.Itoa(p)
		m.DraftedByPosition.WithLabelValues(model, pos).Inc()
		if p < accepted {
			m.AcceptedByPosition.WithLabelValues(model, pos).Inc()
		}
	}
}

// buildVersion reads the module version and VCS revision the binary was built from.
func buildVersion() (version, revision string) {
	version, revision = "devel", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		version = v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			revision = s.Value
		}
	}
	return
}
