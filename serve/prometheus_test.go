package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/internal/testenv"
)

// TestDashboardQueries runs a real Prometheus with deploy/prometheus.yml against serve.Run serving
// every mode (standalone, spec, pipeline, pipeline+spec over 3 stages) under real traffic, and
// checks that every PromQL expression of the Grafana dashboard returns data, and that each mode
// fed its own series: per-stage forward and per-hop network time for the pipelines, acceptance
// for the speculative modes, batch size and KV occupancy for all. Nothing is fed by hand.
func TestDashboardQueries(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed: run `just setup` (it installs the Debian package prometheus)")
	}
	root := testenv.Root(t)
	exprs := dashboardExprs(t, filepath.Join(root, "deploy", "grafana", "dashboards", "hippo.json"))
	began := time.Now()
	base, models := startModes(t)
	t.Logf("serving after %v", time.Since(began).Round(time.Millisecond))

	cfg, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(cfg)
	for old, repl := range map[string]string{"127.0.0.1:8002": strings.TrimPrefix(base, "http://"), "scrape_interval: 5s": "scrape_interval: 1s"} {
		if !strings.Contains(text, old) {
			t.Fatalf("deploy/prometheus.yml no longer contains %q", old)
		}
		text = strings.ReplaceAll(text, old, repl)
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		cmd.Wait()
	}()

	// Traffic until the queries are answered: two clients per model, streamed and not, so that
	// a second request waits in the queue while the first runs.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, m := range models {
		for c := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"one two three, one two three %d"}],"max_tokens":12,"temperature":0,"stream":%t}`,
						m.ID, i, (i+c)%2 == 0)
					resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
					if err != nil {
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						t.Errorf("%s: status %d", m.ID, resp.StatusCode)
						return
					}
				}
			}()
		}
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	pending := map[string]bool{`up{job="hippo"} == 1`: true}
	for _, e := range exprs {
		pending[strings.ReplaceAll(e, "$__rate_interval", "15s")] = true
	}
	for _, m := range models {
		pending[fmt.Sprintf(`max_over_time(hippo_batch_size{model=%q}[1m]) > 0`, m.ID)] = true
		pending[fmt.Sprintf(`max_over_time(hippo_kv_cache_bytes{model=%q}[1m]) > 0`, m.ID)] = true
		pending[fmt.Sprintf(`hippo_kv_cache_capacity_bytes{model=%q} > 0`, m.ID)] = true
		pending[fmt.Sprintf(`hippo_forward_seconds_count{model=%q,stage="0"} > 0`, m.ID)] = true
		pending[fmt.Sprintf(`hippo_inter_token_latency_seconds_count{model=%q} > 0`, m.ID)] = true
	}
	for _, e := range []string{
		`hippo_sample_seconds_count{model="alone"} > 0`,
		`hippo_forward_seconds_count{model="pipe",stage="1"} > 0`,
		`hippo_network_seconds_count{model="pipe",hop="0"} > 0`,
		`hippo_forward_seconds_count{model="pipespec",stage="2"} > 0`,
		`hippo_network_seconds_count{model="pipespec",hop="0"} > 0`,
		`hippo_network_seconds_count{model="pipespec",hop="1"} > 0`,
		`hippo_spec_drafted_tokens_total{model="spec"} > 0`,
		`hippo_spec_accepted_by_position_total{model="spec",position="2"} > 0`,
		`hippo_spec_drafted_by_position_total{model="pipespec",position="0"} > 0`,
		`hippo_queue_wait_seconds_count > 0`,
	} {
		pending[e] = true
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(pending) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Second)
		for e := range pending {
			if ok, err := hasData("http://"+promAddr, e); err != nil {
				if strings.Contains(err.Error(), "bad_data") {
					t.Fatalf("query %s is invalid PromQL: %v", e, err)
				}
			} else if ok {
				delete(pending, e)
				if testing.Verbose() {
					t.Logf("%v: data for %s", time.Since(began).Round(time.Second), e)
				}
			}
		}
	}
	for e := range pending {
		t.Errorf("no data for %s", e)
	}
	if t.Failed() {
		t.Logf("prometheus log:\n%s", logs.String())
	}
}

// dashboardExprs returns every PromQL expression of a Grafana dashboard.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	if len(out) < 10 {
		t.Fatalf("%s has only %d queries", path, len(out))
	}
	return out
}

// hasData reports whether an instant query returns at least one sample that is a number.
func hasData(base, expr string) (bool, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var r struct {
		Status    string
		ErrorType string
		Error     string
		Data      struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return false, err
	}
	if r.Status != "success" {
		return false, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	for _, s := range r.Data.Result {
		if v, ok := s.Value[1].(string); ok && v != "NaN" {
			return true, nil
		}
	}
	return false, nil
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
