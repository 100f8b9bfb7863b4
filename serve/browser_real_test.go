package serve

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// TestWebChatRealModel asks SmolLM2-135M-Instruct, served from the GGUF file `just setup`
// installs, a question in the web chat (greedy, 24 tokens) and checks that the real answer
// streams in.
func TestWebChatRealModel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir, err := synth.Resolve(ctx, "smollm2-135m", t.TempDir(), filepath.Join(testenv.Root(t), ".cache", "tokenizers"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := engines.Open(ctx, engines.Options{Model: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	m := Model{ID: "smollm2-135m", Generator: e, Tokenizer: EngineTokenizer(e.Tokenizer()), Context: 2048, MemoryBytes: e.WeightBytes()}
	_, ts := newTestServer(t, m, Options{})

	page := sendInBrowser(ctx, t, ts.URL+"/?max_tokens=24&temperature=0", "What is the capital of France?")
	defer page.Close()
	page.waitTrueFor(t, `/ · (stop|length)$/.test(document.getElementById("stats").textContent)`, "the reply to finish", 4*time.Minute)
	reply := page.eval(t, `document.querySelector(".assistant .text").textContent`)
	t.Logf("reply: %q (%s)", reply, page.eval(t, `document.getElementById("stats").textContent`))
	if !strings.Contains(reply, "Paris") {
		t.Errorf("reply %q does not name Paris", reply)
	}
}
