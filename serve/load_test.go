package serve

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLoad runs many concurrent streaming clients against one model for a bounded time on
// loopback: every request must succeed with a complete stream, generations must never overlap,
// and afterwards the server's goroutines must be gone.
func TestLoad(t *testing.T) {
	const (
		clients  = 48
		duration = 6 * time.Second
	)
	baseline := runtime.NumGoroutine()
	pieces := strings.Fields("the quick brown fox jumps over the lazy dog again and again")
	m, g := fakeModel(pieces...)
	g.delay = 100 * time.Microsecond
	reg := prometheus.NewRegistry()
	s, err := New(Options{Models: []Model{m}, MaxQueue: clients, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	want := strings.Join(pieces, "")

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		failed.Add(1)
		firstErr.CompareAndSwap(nil, err)
	}
	stop := time.Now().Add(duration)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				stream := c%4 != 0 // a quarter of the clients do not stream
				body := fmt.Sprintf(`{"model":"fake","messages":[{"role":"user","content":"client %d"}],"stream":%t}`, c, stream)
				resp, err := client.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
				if err != nil {
					fail(err)
					return
				}
				text, err := readReply(resp, stream)
				resp.Body.Close()
				switch {
				case err != nil:
					fail(err)
				case text != want:
					fail(fmt.Errorf("reply %q; want %q", text, want))
				default:
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	if g.overlap.Load() {
		t.Error("generations overlapped on one model")
	}
	if got := testutil.ToFloat64(s.Metrics().Requests.WithLabelValues("/v1/chat/completions", "200")); got != float64(ok.Load()) {
		t.Errorf("hippo_requests_total{code=200} = %v; want %d", got, ok.Load())
	}
	if got := testutil.ToFloat64(s.Metrics().QueueDepth); got != 0 {
		t.Errorf("hippo_queue_depth = %v after the load; want 0", got)
	}
	t.Logf("%d requests by %d clients in %s", ok.Load(), clients, duration)

	tr.CloseIdleConnections()
	ts.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after the load; %d before\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readReply returns the text of a chat response, checking that a stream is complete.
func readReply(resp *http.Response, stream bool) (string, error) {
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	if !stream {
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return "", err
		}
		i := strings.Index(string(b), `"content":"`)
		j := strings.Index(string(b), `"},"logprobs"`)
		if i < 0 || j < i {
			return "", fmt.Errorf("unexpected body %s", b)
		}
		return string(b[i+len(`"content":"`) : j]), nil
	}
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		line := sc.Text()
		if line == "data: [DONE]" {
			done = true
			continue
		}
		if i := strings.Index(line, `"delta":{"content":"`); i >= 0 {
			rest := line[i+len(`"delta":{"content":"`):]
			text.WriteString(rest[:strings.IndexByte(rest, '"')])
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if !done {
		return "", fmt.Errorf("stream ended without [DONE]")
	}
	return text.String(), nil
}
