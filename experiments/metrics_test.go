package experiments

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hippo-bench/hippo/bench"
	"github.com/hippo-bench/hippo/results"
)

func TestMetricsObserveEveryHop(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.start(1, 0, 1)
	r := &results.Record{Config: bench.Config{Mode: "pipeline", Link: "thunderbolt", Stages: 3}, Result: &bench.Result{Steps: []bench.Step{
		{ForwardMS: 10, NetworkMS: 3, HopNetworkMS: []float64{1, 2}, Tokens: 1},
		{ForwardMS: 10, NetworkMS: 5, HopNetworkMS: []float64{2, 3}, Tokens: 1},
	}}}
	m.finished(r)
	if got := testutil.CollectAndCount(m.hop); got != 2 {
		t.Errorf("%d hop series; want 2 (hops 0 and 1)", got)
	}
	if got := testutil.CollectAndCount(m.network); got != 1 {
		t.Errorf("%d network series; want 1", got)
	}
}
