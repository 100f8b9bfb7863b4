package serve

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/tokenizer"
)

// fakeTokenizer has a vocabulary of chosen text pieces: id i decodes to vocab[i], and the last id
// is EOS. Encode gives one id (0) per byte, so prompt_tokens is the prompt's length in bytes.
type fakeTokenizer struct{ vocab []string }

func (t fakeTokenizer) Encode(text string, addSpecial bool) []int { return make([]int, len(text)) }

func (t fakeTokenizer) ApplyChatTemplate(msgs []tokenizer.Message, addGen bool) (string, error) {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "<%s>%s\n", m.Role, m.Content)
	}
	if addGen {
		b.WriteString("<assistant>")
	}
	return b.String(), nil
}

func (t fakeTokenizer) EOS() []int          { return []int{len(t.vocab) - 1} }
func (t fakeTokenizer) VocabSize() int      { return len(t.vocab) }
func (t fakeTokenizer) NewDecoder() Decoder { return &fakeDecoder{t.vocab} }

type fakeDecoder struct{ vocab []string }

func (d *fakeDecoder) Add(id int) string { return d.vocab[id] }
func (d *fakeDecoder) Flush() string     { return "" }

// fakeGenerator emits script (then EOS when it runs out), one token per delay. It checks that
// the server never overlaps two generations, and records what it was asked.
type fakeGenerator struct {
	script []int
	eos    int
	delay  time.Duration
	// gate, when set, is received from before each token: tests close it or send to release.
	gate chan struct{}

	inFlight atomic.Int32
	overlap  atomic.Bool
	calls    atomic.Int32
	canceled atomic.Int32
	emitted  atomic.Int32
	mu       sync.Mutex
	last     engines.Request
}

func (g *fakeGenerator) Generate(ctx context.Context, r engines.Request, emit func(engines.Token) error) (engines.Stats, error) {
	if g.inFlight.Add(1) > 1 {
		g.overlap.Store(true)
	}
	defer g.inFlight.Add(-1)
	g.calls.Add(1)
	g.mu.Lock()
	g.last = r
	g.mu.Unlock()
	st := engines.Stats{PromptTokens: len(r.Tokens)}
	for i := 0; ; i++ {
		if g.gate != nil {
			select {
			case <-g.gate:
			case <-ctx.Done():
			}
		}
		if g.delay > 0 {
			t := time.NewTimer(g.delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		if err := ctx.Err(); err != nil {
			g.canceled.Add(1)
			return st, fmt.Errorf("%w: %w", engines.ErrCanceled, err)
		}
		id := g.eos
		if i < len(g.script) {
			id = g.script[i]
		}
		st.Tokens = append(st.Tokens, id)
		g.emitted.Add(1)
		step := engines.Step{Forward: time.Millisecond, Sample: 100 * time.Microsecond}
		if i > 0 {
			st.Steps = append(st.Steps, step)
		}
		if err := emit(engines.Token{ID: id, Step: step}); err != nil {
			return st, err
		}
		if id == g.eos {
			st.FinishReason = "stop"
			return st, nil
		}
		if len(st.Tokens) >= r.MaxTokens {
			st.FinishReason = "length"
			return st, nil
		}
	}
}

func (g *fakeGenerator) request() engines.Request {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last
}

// fakeModel serves pieces in order, then EOS. Its id is "fake".
func fakeModel(pieces ...string) (Model, *fakeGenerator) {
	vocab := append(append([]string{}, pieces...), "<eos>")
	g := &fakeGenerator{eos: len(vocab) - 1}
	for i := range pieces {
		g.script = append(g.script, i)
	}
	return Model{ID: "fake", Generator: g, Tokenizer: fakeTokenizer{vocab}, Context: 256, MemoryBytes: 1234}, g
}

// newTestServer serves m over httptest with reproducible ids and times; o.Models is set to m.
func newTestServer(t *testing.T, m Model, o Options) (*Server, *httptest.Server) {
	t.Helper()
	o.Models = []Model{m}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	o.Now = func() time.Time { return time.Unix(1700000000, 0) }
	var n atomic.Int32
	o.NewID = func() string { return fmt.Sprintf("test%d", n.Add(1)) }
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}
