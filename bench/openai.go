package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// OpenAI measures any OpenAI-compatible server (hippo serve, mlx_lm.server, ...) from its
// token stream: time to first token, the gaps between streamed chunks, and tokens per second,
// with Concurrency identical streams in flight at once. The API key, if the server needs one,
// comes from $HIPPO_OPENAI_KEY or $OPENAI_API_KEY.
type OpenAI struct {
	// Client is the HTTP client (default: one with no overall timeout; the context bounds runs).
	Client *http.Client
}

type streamResult struct {
	ttft    time.Duration
	gaps    []time.Duration
	tokens  int
	prompt  int
	text    string
	finish  string
	elapsed time.Duration
	err     error
}

// Run executes one configuration of mode "openai": c.BaseURL is the server's /v1 root, c.Model the
// model name it serves.
func (o *OpenAI) Run(ctx context.Context, c Config) (Result, error) {
	res := Result{Mode: "openai", Model: c.Model}
	if c.BaseURL == "" {
		return res, fmt.Errorf("mode openai needs base_url (e.g. http://127.0.0.1:8002/v1)")
	}
	n := max(c.Concurrency, 1)
	results := make([]streamResult, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i] = o.stream(ctx, c)
		}(i)
	}
	wg.Wait()
	wall := time.Since(start)
	var tokens int
	var ttft time.Duration
	for _, r := range results {
		if r.err != nil {
			return res, r.err
		}
		tokens += r.tokens
		ttft += r.ttft
		for _, g := range r.gaps {
			res.Steps = append(res.Steps, Step{ForwardMS: ms(g), Tokens: 1})
		}
	}
	first := results[0]
	res.Text, res.FinishReason, res.PromptTokens = first.text, first.finish, first.prompt
	res.Tokens = []int{}
	res.TTFTMS = ms(ttft) / float64(n)
	// Aggregate decode throughput: every stream's tokens after its first, over the wall time
	// after the mean first token.
	if d := wall - ttft/time.Duration(n); d > 0 {
		res.DecodeTokS = float64(tokens-n) / d.Seconds()
	}
	return res, nil
}

func (o *OpenAI) stream(ctx context.Context, c Config) streamResult {
	var r streamResult
	body := map[string]any{
		"model": c.Model, "max_tokens": c.MaxTokens, "temperature": c.Temperature, "stream": true,
		"stream_options": map[string]any{"include_usage": true}, "seed": c.Seed,
	}
	path := "/completions"
	if c.Chat {
		path = "/chat/completions"
		body["messages"] = []map[string]string{{"role": "user", "content": c.Prompt}}
	} else {
		body["prompt"] = c.Prompt
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.BaseURL, "/")+path, bytes.NewReader(b))
	if err != nil {
		r.err = err
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	for _, k := range []string{"HIPPO_OPENAI_KEY", "OPENAI_API_KEY"} {
		if v := os.Getenv(k); v != "" {
			req.Header.Set("Authorization", "Bearer "+v)
			break
		}
	}
	client := o.Client
	if client == nil {
		client = http.DefaultClient
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		r.err = fmt.Errorf("openai: %w", err)
		return r
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		r.err = fmt.Errorf("openai: %s answered %s: %s", req.URL, resp.Status, bytes.TrimSpace(msg))
		return r
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var last time.Time
	var text strings.Builder
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			break
		}
		var chunk struct {
			Choices []struct {
				Text         string                   `json:"text"`
				Delta        struct{ Content string } `json:"delta"`
				FinishReason *string                  `json:"finish_reason"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct{ Message string } `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &chunk); err != nil {
			r.err = fmt.Errorf("openai: bad stream chunk %q: %w", line, err)
			return r
		}
		if chunk.Error != nil {
			r.err = fmt.Errorf("openai: stream error: %s", chunk.Error.Message)
			return r
		}
		if chunk.Usage != nil {
			r.prompt, r.tokens = chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens
		}
		for _, ch := range chunk.Choices {
			piece := ch.Text + ch.Delta.Content
			if ch.FinishReason != nil {
				r.finish = *ch.FinishReason
			}
			if piece == "" {
				continue
			}
			now := time.Now()
			if last.IsZero() {
				r.ttft = now.Sub(start)
			} else {
				r.gaps = append(r.gaps, now.Sub(last))
			}
			last = now
			text.WriteString(piece)
		}
	}
	if err := sc.Err(); err != nil {
		r.err = fmt.Errorf("openai: stream: %w", err)
		return r
	}
	if r.tokens == 0 { // the server sent no usage: count chunks
		r.tokens = len(r.gaps) + 1
	}
	r.text, r.elapsed = text.String(), time.Since(start)
	return r
}
