package serve

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/synth"
	"github.com/hippo-bench/hippo/engines/tokenizer"
	"github.com/hippo-bench/hippo/internal/testenv"
	"github.com/hippo-bench/hippo/internal/testmodel"
)

// synthesize writes a tiny seeded checkpoint with a real tokenizer and chat template.
func synthesize(t *testing.T, preset string) string {
	t.Helper()
	return testmodel.Synthesize(t, synth.Options{Preset: preset, Seed: 1})
}

// startServe runs the real server (serve.Run: engines, HTTP, shutdown) on a loopback port and
// returns its base URL; it is shut down when the test ends.
func startServe(t *testing.T, c Config) string {
	t.Helper()
	return startServeWith(t, c, RunOptions{})
}

// startServeWith is startServe with options (its Logger and Ready are replaced).
func startServeWith(t *testing.T, c Config, o RunOptions) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	c.Listen = "127.0.0.1:0"
	go func() {
		o.Logger, o.Ready = slog.New(slog.DiscardHandler), func(addr string) { ready <- addr }
		done <- Run(ctx, c, o)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve.Run: %v", err)
		}
	})
	select {
	case addr := <-ready:
		return "http://" + addr
	case err := <-done:
		t.Fatalf("serve.Run: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the server did not start within 60 s")
	}
	return ""
}

// TestOpenAISDK drives a real server on a tiny synthetic Qwen3 (real tokenizer and chat template)
// with the official openai Python SDK, then checks its greedy reply against the engine's own.
func TestOpenAISDK(t *testing.T) {
	py := testenv.Python(t)
	if out, err := exec.Command(py, "-c", "import openai").CombinedOutput(); err != nil {
		t.Fatalf("the openai SDK is missing from .venv: run `just setup` (requirements.txt pins it)\n%s", out)
	}
	dir := synthesize(t, "tiny-qwen3")
	const key = "sk-test-key"
	base := startServe(t, Config{APIKeys: []string{key}, Models: []ModelConfig{{ID: "tiny", Model: dir, Context: 512}}})

	cmd := exec.Command(py, filepath.Join("testdata", "openai_client.py"), base+"/v1", key, "tiny")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("openai client: %v\n%s", err, stderr.String())
	}
	var got struct {
		Chat struct {
			Text             string
			Finish           string
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		}
		Stream     struct{ Chunks int }
		Completion struct {
			PromptTokens int `json:"prompt_tokens"`
		}
		WrongKey     int `json:"wrong_key"`
		UnknownModel int `json:"unknown_model"`
		N2           string
	}
	if err := json.Unmarshal(stdout, &got); err != nil {
		t.Fatalf("client printed %q: %v", stdout, err)
	}
	t.Logf("client saw: %s", stdout)

	// The same greedy generation straight from the engine.
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	text, err := tok.ApplyChatTemplate([]tokenizer.Message{{Role: "user", Content: "Name three colours."}}, true)
	if err != nil {
		t.Fatal(err)
	}
	prompt := tok.Encode(text, false)
	e, err := engines.Open(context.Background(), engines.Options{Model: dir, Context: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	st, err := e.Generate(context.Background(), engines.Request{Tokens: prompt, MaxTokens: 8}, func(engines.Token) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	ids := st.Tokens
	eos := map[int]bool{}
	for _, id := range tok.EOS() {
		eos[id] = true
	}
	if n := len(ids); n > 0 && eos[ids[n-1]] {
		ids = ids[:n-1]
	}
	want := tok.Decode(ids, false)
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"chat text", got.Chat.Text, want},
		{"finish reason", got.Chat.Finish, st.FinishReason},
		{"prompt tokens", got.Chat.PromptTokens, len(prompt)},
		{"completion tokens", got.Chat.CompletionTokens, len(st.Tokens)},
		{"completion prompt tokens", got.Completion.PromptTokens, len(tok.Encode("The harbour at dawn", true))},
		{"wrong key status", got.WrongKey, 401},
		{"unknown model status", got.UnknownModel, 404},
		{"n=2 param", got.N2, "n"},
	} {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s = %v; want %v", c.name, c.got, c.want)
		}
	}
	if got.Stream.Chunks < 3 {
		t.Errorf("the stream had %d chunks; want one per token plus opening and closing", got.Stream.Chunks)
	}
}
