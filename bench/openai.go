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

// Burst is one burst of concurrent streams as a client sees it.
type Burst struct {
	// Wall is from the first request sent to the last stream's end.
	Wall time.Duration
	// Tokens is the completion tokens of all streams (from the usage chunk, else the text chunks).
	Tokens int
	// TTFT has one entry per stream: the time to its first text; Gaps are the times between
	// later text chunks, over all streams (inter-token latency when a chunk is a token).
	TTFT, Gaps []time.Duration
}

// TokS is the aggregate throughput: completion tokens over the wall time of the whole burst,
// prefill and queueing included, which is what n clients get out of the server together.
func (b Burst) TokS() float64 {
	return Rate(b.Tokens, b.Wall)
}

// Run executes one configuration of mode "openai": c.BaseURL is the server's /v1 root, c.Model the
// model name it serves. DecodeTokS is the burst's aggregate tok/s (Burst.TokS).
func (o *OpenAI) Run(ctx context.Context, c Config) (Result, error) {
	res := Result{Mode: "openai", Model: c.Model}
	if c.BaseURL == "" {
		return res, fmt.Errorf("mode openai needs base_url (e.g. http://127.0.0.1:8002/v1)")
	}
	b, results, err := o.burst(ctx, c)
	if err != nil {
		return res, err
	}
	for _, g := range b.Gaps {
		res.Steps = append(res.Steps, Step{ForwardMS: ms(g), Tokens: 1})
	}
	first := results[0]
	res.Text, res.FinishReason, res.PromptTokens = first.text, first.finish, first.prompt
	res.Tokens = []int{}
	var ttft time.Duration
	for _, t := range b.TTFT {
		ttft += t
	}
	res.TTFTMS = ms(ttft) / float64(len(b.TTFT))
	res.DecodeTokS = b.TokS()
	return res, nil
}

// Burst runs max(c.Concurrency, 1) identical streams at once and measures them.
func (o *OpenAI) Burst(ctx context.Context, c Config) (Burst, error) {
	b, _, err := o.burst(ctx, c)
	return b, err
}

func (o *OpenAI) burst(ctx context.Context, c Config) (Burst, []streamResult, error) {
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
	b := Burst{Wall: time.Since(start)}
	for _, r := range results {
		if r.err != nil {
			return b, nil, r.err
		}
		b.Tokens += r.tokens
		b.TTFT = append(b.TTFT, r.ttft)
		b.Gaps = append(b.Gaps, r.gaps...)
	}
	return b, results, nil
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
