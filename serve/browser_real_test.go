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
	bin := findChromium()
	if bin == "" {
		t.Fatal("chromium is not installed: run `just setup` (it installs the Debian package chromium)")
	}
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

	page := cdpPage(t, "http://127.0.0.1:"+startChromium(ctx, t, bin))
	defer page.Close()
	page.call(t, "Page.navigate", map[string]any{"url": ts.URL + "/?max_tokens=24&temperature=0"})
	page.waitTrue(t, `document.querySelector("#model option") !== null`, "the model list to load")
	page.eval(t, `document.getElementById("input").focus()`)
	page.call(t, "Input.insertText", map[string]any{"text": "What is the capital of France?"})
	for _, typ := range []string{"keyDown", "keyUp"} {
		page.call(t, "Input.dispatchKeyEvent", map[string]any{"type": typ, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"})
	}
	page.waitTrueFor(t, `/ · (stop|length)$/.test(document.getElementById("stats").textContent)`, "the reply to finish", 4*time.Minute)
	reply := page.eval(t, `document.querySelector(".assistant .text").textContent`)
	t.Logf("reply: %q (%s)", reply, page.eval(t, `document.getElementById("stats").textContent`))
	if !strings.Contains(reply, "Paris") {
		t.Errorf("reply %q does not name Paris", reply)
	}
}
