package serve

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// batchingFake is a fakeGenerator that declares it batches, so the server overlaps its calls.
type batchingFake struct {
	*fakeGenerator
	max int
}

func (b batchingFake) MaxBatch() int { return b.max }

// TestSlowClientDropped: one streaming client stops reading while four others stream at full
// speed. The four get their whole streams; the stalled one fills its buffers, is dropped after the
// write timeout and its generation is cancelled, so the server never waits on it.
func TestSlowClientDropped(t *testing.T) {
	// Big pieces fill the socket buffers of a stalled client after a few hundred tokens.
	big := strings.Repeat("x", 64<<10)
	m, g := fakeModel(big)
	g.script = make([]int, 4096) // id 0, the big piece, again and again
	m.Generator = batchingFake{g, 8}
	m.Context = 8192
	_, ts := newTestServer(t, m, Options{WriteTimeout: 500 * time.Millisecond})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := `{"model":"fake","prompt":"hi","max_tokens":4000,"stream":true}`
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	stalled, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Body.Close()
	// Read nothing more from stalled: wait until it has generated a little, then start the others.
	waitFor(t, "the stalled stream to start", func() bool { return g.emitted.Load() > 8 })

	var wg sync.WaitGroup
	texts := make([]int, 4)
	finish := make([]string, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(ts.URL+"/v1/completions", "application/json",
				strings.NewReader(`{"model":"fake","prompt":"hi","max_tokens":20,"stream":true}`))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 256<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				texts[i] += strings.Count(line, big)
				if strings.Contains(line, `"finish_reason":"length"`) {
					finish[i] = "length"
				}
			}
		}()
	}
	wg.Wait()
	for i := range 4 {
		if texts[i] != 20 || finish[i] != "length" {
			t.Errorf("stream %d beside a stalled client: %d pieces, finish %q; want 20, length", i, texts[i], finish[i])
		}
	}
	waitFor(t, "the stalled client to be dropped and its generation to end", func() bool { return g.inFlight.Load() == 0 })
	if n := g.emitted.Load(); n >= 4000+4*20 {
		t.Errorf("%d tokens generated: the stalled stream ran to its end instead of being dropped", n)
	}
	// The dropped client sees its stream cut short.
	io.Copy(io.Discard, stalled.Body)
}

// TestBatchingOverlaps: a generator that batches gets up to MaxBatch calls at once; more wait.
func TestBatchingOverlaps(t *testing.T) {
	m, g := fakeModel("a", "b")
	g.gate = make(chan struct{})
	m.Generator = batchingFake{g, 3}
	s, ts := newTestServer(t, m, Options{MaxQueue: 2})
	results := postChats(ts.URL, 5)
	waitFor(t, "three running and two queued", func() bool { return g.inFlight.Load() == 3 && s.waiting.Load() == 2 })
	resp, b := post(t, ts.URL+"/v1/chat/completions", chatOK)
	if resp.StatusCode != 429 {
		t.Errorf("sixth request: %d %s; want 429 (3 running, queue of 2 full)", resp.StatusCode, b)
	}
	close(g.gate)
	for range 5 {
		if code := <-results; code != 200 {
			t.Errorf("status %d; want 200", code)
		}
	}
}
