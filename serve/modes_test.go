package serve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/hippo-bench/hippo/internal/testenv"
)

// modeModels are one served model per execution mode, on the same tiny checkpoint: spec drafts
// with a draft model (the checkpoint itself), pipeline+spec with lookup over three stages.
func modeModels(dir string) []ModelConfig {
	return []ModelConfig{
		{ID: "alone", Model: dir, Context: 512},
		{ID: "spec", Model: dir, Context: 512, Mode: "spec", Drafter: "model", Draft: dir, DraftTokens: 3},
		{ID: "pipe", Model: dir, Context: 512, Mode: "pipeline", Stages: 2},
		{ID: "pipespec", Model: dir, Context: 512, Mode: "pipeline+spec", Drafter: "lookup", DraftTokens: 3, Stages: 3},
	}
}

// startModes serves modeModels through serve.Run, local pipeline stages started from bin/hippo.
func startModes(t *testing.T) (base string, models []ModelConfig) {
	t.Helper()
	exe := testenv.Hippo(t)
	models = modeModels(synthesize(t, "tiny-qwen3"))
	return startServeWith(t, Config{Models: models}, RunOptions{Exe: exe}), models
}

// complete asks model for a greedy completion of prompt and returns its text.
func complete(base, model, prompt string, maxTokens int) (string, error) {
	body, _ := json.Marshal(map[string]any{"model": model, "prompt": prompt, "max_tokens": maxTokens, "temperature": 0})
	resp, err := http.Post(base+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var r struct {
		Choices []struct{ Text string }
		Error   *struct{ Message string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK || len(r.Choices) != 1 {
		return "", fmt.Errorf("status %d: %+v", resp.StatusCode, r.Error)
	}
	return r.Choices[0].Text, nil
}

// TestServeModes is the serving side of pipeline == spec == standalone: every mode, served with
// several requests in flight at once, answers each greedy request with the standalone model's
// text. Modes that run one request at a time must queue the others, not mix them up.
func TestServeModes(t *testing.T) {
	base, models := startModes(t)
	prompts := []string{"one two three, one two three, one", "The hidden state crosses the link", "Speculation drafts; the target verifies"}
	want := map[string]string{}
	for _, p := range prompts {
		text, err := complete(base, "alone", p, 24)
		if err != nil {
			t.Fatal(err)
		}
		want[p] = text
	}
	var wg sync.WaitGroup
	for _, m := range models {
		for _, p := range prompts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := complete(base, m.ID, p, 24)
				if err != nil {
					t.Errorf("%s: %q: %v", m.ID, p, err)
					return
				}
				if got != want[p] {
					t.Errorf("%s: %q -> %q; standalone %q", m.ID, p, got, want[p])
				}
			}()
		}
	}
	wg.Wait()
}
