package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakeOpenAI streams n chunks of one word each, gap apart, then usage and [DONE].
func fakeOpenAI(t *testing.T, n int, gap time.Duration) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req["stream"] != true {
			http.Error(w, `{"error":{"message":"bad request"}}`, 400)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < n; i++ {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"text\":\"w%d \"}]}\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(gap)
		}
		fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n")
		fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":%d}}\n\n", n)
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
}

func TestOpenAIMeasuresTheStream(t *testing.T) {
	srv := fakeOpenAI(t, 8, 5*time.Millisecond)
	defer srv.Close()
	var o OpenAI
	res, err := o.Run(context.Background(), Config{Mode: "openai", BaseURL: srv.URL, Model: "m", Prompt: "hi", MaxTokens: 8, Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.PromptTokens != 7 || res.FinishReason != "length" || !strings.HasPrefix(res.Text, "w0 w1") {
		t.Errorf("result = %+v; want 7 prompt tokens, finish length, text w0 w1 ...", res)
	}
	if got, want := len(res.Steps), 3*7; got != want {
		t.Errorf("%d inter-token gaps; want %d (7 per stream, 3 streams)", got, want)
	}
	if res.DecodeTokS <= 0 || res.TTFTMS <= 0 {
		t.Errorf("decode tok/s %v, TTFT %v; want both positive", res.DecodeTokS, res.TTFTMS)
	}
}

func TestOpenAIReportsServerErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":{"message":"invalid api key"}}`, http.StatusUnauthorized)
	}))
	defer srv.Close()
	var o OpenAI
	_, err := o.Run(context.Background(), Config{Mode: "openai", BaseURL: srv.URL, Model: "m", Prompt: "hi", MaxTokens: 4})
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "invalid api key") {
		t.Errorf("Run against a 401 = %v; want the status and the server's message", err)
	}
	if _, err := o.Run(context.Background(), Config{Mode: "openai", Model: "m"}); err == nil || !strings.Contains(err.Error(), "base_url") {
		t.Errorf("Run without base_url = %v; want an error naming base_url", err)
	}
}

// TestBurstAggregate: a burst counts every stream's completion tokens over the wall time of the
// whole burst (not the time after the first token, which flatters a server that serves streams
// one at a time).
func TestBurstAggregate(t *testing.T) {
	srv := fakeOpenAI(t, 8, 2*time.Millisecond)
	defer srv.Close()
	var o OpenAI
	b, err := o.Burst(context.Background(), Config{BaseURL: srv.URL, Model: "m", Prompt: "hi", MaxTokens: 8, Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	if b.Tokens != 24 || len(b.TTFT) != 3 || len(b.Gaps) != 21 {
		t.Errorf("burst: %d tokens, %d TTFTs, %d gaps; want 24, 3, 21", b.Tokens, len(b.TTFT), len(b.Gaps))
	}
	if got, want := b.TokS(), 24/b.Wall.Seconds(); got != want {
		t.Errorf("TokS() = %v; want tokens / wall = %v", got, want)
	}
}
