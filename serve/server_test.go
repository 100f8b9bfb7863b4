package serve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/hippo-bench/hippo/engines"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func do(t *testing.T, method, url, body string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func post(t *testing.T, url, body string) (*http.Response, []byte) {
	t.Helper()
	return do(t, "POST", url, body, nil)
}

const chatOK = `{"model":"fake","messages":[{"role":"user","content":"hi"}],"max_tokens":3}`

// TestMalformedRequests is invariant 6 for HTTP: every bad request gets an OpenAI error object
// with the right status, and the server stays healthy afterwards.
func TestMalformedRequests(t *testing.T) {
	m, g := fakeModel("a", "b", "c", "d")
	s, ts := newTestServer(t, m, Options{APIKeys: []string{"sk-right"}, MaxBody: 4096})
	auth := map[string]string{"Authorization": "Bearer sk-right"}
	msg := func(extra string) string {
		return `{"model":"fake","messages":[{"role":"user","content":"hi"}]` + extra + `}`
	}
	cases := []struct {
		name, method, path, body string
		header                   map[string]string
		status                   int
		code, param              string
	}{
		{name: "bad json", body: `{"model":`, status: 400, code: "invalid_json"},
		{name: "empty body", body: ``, status: 400, code: "invalid_json"},
		{name: "array body", body: `[]`, status: 400, code: "invalid_json"},
		{name: "null body", body: `null`, status: 400, code: "invalid_json"},
		{name: "two objects", body: `{} {}`, status: 400, code: "invalid_json"},
		{name: "unknown field", body: msg(`,"temprature":1`), status: 400, code: "unknown_parameter", param: "temprature"},
		{name: "missing model", body: `{"messages":[{"role":"user","content":"hi"}]}`, status: 400, param: "model"},
		{name: "model not a string", body: `{"model":7,"messages":[]}`, status: 400, param: "model"},
		{name: "unknown model", body: `{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}`, status: 404, code: "model_not_found", param: "model"},
		{name: "missing messages", body: `{"model":"fake"}`, status: 400, param: "messages"},
		{name: "messages not an array", body: `{"model":"fake","messages":"hi"}`, status: 400, param: "messages"},
		{name: "messages empty", body: `{"model":"fake","messages":[]}`, status: 400, param: "messages"},
		{name: "message not an object", body: `{"model":"fake","messages":["hi"]}`, status: 400, param: "messages[0]"},
		{name: "missing role", body: `{"model":"fake","messages":[{"content":"hi"}]}`, status: 400, param: "messages[0].role"},
		{name: "unknown role", body: `{"model":"fake","messages":[{"role":"wizard","content":"hi"}]}`, status: 400, param: "messages[0].role"},
		{name: "tool role", body: `{"model":"fake","messages":[{"role":"tool","content":"hi"}]}`, status: 400, param: "messages[0].role"},
		{name: "role not a string", body: `{"model":"fake","messages":[{"role":1,"content":"hi"}]}`, status: 400, param: "messages[0]"},
		{name: "missing content", body: `{"model":"fake","messages":[{"role":"user"}]}`, status: 400, param: "messages[0].content"},
		{name: "content a number", body: `{"model":"fake","messages":[{"role":"user","content":5}]}`, status: 400, param: "messages[0].content"},
		{name: "image part", body: `{"model":"fake","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, status: 400, param: "messages[0].content[0]"},
		{name: "negative max_tokens", body: msg(`,"max_tokens":-1`), status: 400, param: "max_tokens"},
		{name: "zero max_tokens", body: msg(`,"max_tokens":0`), status: 400, param: "max_tokens"},
		{name: "string max_tokens", body: msg(`,"max_tokens":"10"`), status: 400, param: "max_tokens"},
		{name: "fractional max_tokens", body: msg(`,"max_tokens":1.5`), status: 400, param: "max_tokens"},
		{name: "huge max_tokens", body: msg(`,"max_tokens":1000000000000`), status: 400, code: "context_length_exceeded", param: "max_tokens"},
		{name: "max_tokens past context", body: msg(`,"max_tokens":250`), status: 400, code: "context_length_exceeded", param: "max_tokens"},
		{name: "negative max_completion_tokens", body: msg(`,"max_completion_tokens":-5`), status: 400, param: "max_completion_tokens"},
		{name: "prompt past context", body: `{"model":"fake","messages":[{"role":"user","content":"` + strings.Repeat("x", 300) + `"}]}`, status: 400, code: "context_length_exceeded", param: "messages"},
		{name: "completion prompt past context", path: "/v1/completions", body: `{"model":"fake","prompt":"` + strings.Repeat("x", 300) + `"}`, status: 400, code: "context_length_exceeded", param: "prompt"},
		{name: "temperature too high", body: msg(`,"temperature":3`), status: 400, param: "temperature"},
		{name: "temperature a string", body: msg(`,"temperature":"hot"`), status: 400, param: "temperature"},
		{name: "top_p above 1", body: msg(`,"top_p":1.5`), status: 400, param: "top_p"},
		{name: "top_p zero", body: msg(`,"top_p":0`), status: 400, param: "top_p"},
		{name: "seed a string", body: msg(`,"seed":"x"`), status: 400, param: "seed"},
		{name: "n = 2", body: msg(`,"n":2`), status: 400, param: "n"},
		{name: "too many stops", body: msg(`,"stop":["a","b","c","d","e"]`), status: 400, param: "stop"},
		{name: "empty stop", body: msg(`,"stop":""`), status: 400, param: "stop"},
		{name: "stop a number", body: msg(`,"stop":42`), status: 400, param: "stop"},
		{name: "stream a string", body: msg(`,"stream":"yes"`), status: 400, param: "stream"},
		{name: "stream_options without stream", body: msg(`,"stream_options":{"include_usage":true}`), status: 400, param: "stream_options"},
		{name: "stream_options unknown key", body: msg(`,"stream":true,"stream_options":{"x":1}`), status: 400, param: "stream_options"},
		{name: "logprobs", body: msg(`,"logprobs":true`), status: 400, param: "logprobs"},
		{name: "tools", body: msg(`,"tools":[{"type":"function","function":{"name":"f"}}]`), status: 400, param: "tools"},
		{name: "presence penalty", body: msg(`,"presence_penalty":1`), status: 400, param: "presence_penalty"},
		{name: "json response format", body: msg(`,"response_format":{"type":"json_object"}`), status: 400, param: "response_format"},
		{name: "oversized body", body: msg(`,"user":"` + strings.Repeat("x", 5000) + `"`), status: 413, code: "request_too_large"},
		{name: "wrong key", body: chatOK, header: map[string]string{"Authorization": "Bearer sk-wrong"}, status: 401, code: "invalid_api_key"},
		{name: "missing key", body: chatOK, header: map[string]string{}, status: 401, code: "invalid_api_key"},
		{name: "basic auth", body: chatOK, header: map[string]string{"Authorization": "Basic c2stcmlnaHQ6"}, status: 401, code: "invalid_api_key"},
		{name: "text/plain body", body: chatOK, header: map[string]string{"Authorization": "Bearer sk-right", "Content-Type": "text/plain"}, status: 400, code: "invalid_content_type"},
		{name: "GET chat", method: "GET", status: 405, code: "method_not_allowed"},
		{name: "unknown path", method: "GET", path: "/v1/embeddings", status: 404, code: "not_found"},
		{name: "unknown model path", method: "GET", path: "/v1/models/nope", status: 404, code: "model_not_found"},
		{name: "completion without prompt", path: "/v1/completions", body: `{"model":"fake"}`, status: 400, param: "prompt"},
		{name: "completion empty prompt list", path: "/v1/completions", body: `{"model":"fake","prompt":[]}`, status: 400, param: "prompt"},
		{name: "completion two prompts", path: "/v1/completions", body: `{"model":"fake","prompt":["a","b"]}`, status: 400, param: "prompt"},
		{name: "completion negative token", path: "/v1/completions", body: `{"model":"fake","prompt":[1,-1]}`, status: 400, param: "prompt"},
		{name: "completion token beyond vocab", path: "/v1/completions", body: `{"model":"fake","prompt":[1,99]}`, status: 400, param: "prompt"},
		{name: "completion echo", path: "/v1/completions", body: `{"model":"fake","prompt":"a","echo":true}`, status: 400, param: "echo"},
		{name: "completion best_of", path: "/v1/completions", body: `{"model":"fake","prompt":"a","best_of":3}`, status: 400, param: "best_of"},
		{name: "completion messages", path: "/v1/completions", body: `{"model":"fake","prompt":"a","messages":[]}`, status: 400, param: "messages"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method, path, header := tc.method, tc.path, tc.header
			if method == "" {
				method = "POST"
			}
			if path == "" {
				path = "/v1/chat/completions"
			}
			if header == nil {
				header = auth
			} else if _, ok := header["Authorization"]; !ok && len(header) > 0 {
				header["Authorization"] = auth["Authorization"]
			}
			resp, body := do(t, method, ts.URL+path, tc.body, header)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d; want %d\n%s", resp.StatusCode, tc.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q; want application/json", ct)
			}
			var e struct {
				Error *struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil || e.Error == nil {
				t.Fatalf("body %s is not an OpenAI error object: %v", body, err)
			}
			if e.Error.Message == "" || e.Error.Type == "" {
				t.Errorf("error %s lacks a message or type", body)
			}
			if tc.code != "" && (e.Error.Code == nil || *e.Error.Code != tc.code) {
				t.Errorf("code %v; want %q (%s)", deref(e.Error.Code), tc.code, body)
			}
			if tc.param != "" && (e.Error.Param == nil || *e.Error.Param != tc.param) {
				t.Errorf("param %v; want %q (%s)", deref(e.Error.Param), tc.param, body)
			}
			if tc.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if n := g.calls.Load(); n != 0 {
		t.Errorf("the engine ran %d times for bad requests; want 0", n)
	}
	// Still healthy, and still serving.
	if resp, body := do(t, "GET", ts.URL+"/health", "", nil); resp.StatusCode != 200 {
		t.Fatalf("health after bad requests: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", ts.URL+"/v1/chat/completions", chatOK, auth); resp.StatusCode != 200 {
		t.Fatalf("good request after bad ones: %d %s", resp.StatusCode, body)
	}
	if got := testutil.ToFloat64(s.Metrics().Requests.WithLabelValues("/v1/chat/completions", "401")); got != 3 {
		t.Errorf("hippo_requests_total{code=401} = %v; want 3", got)
	}
}

func deref(p *string) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestChatCompletion(t *testing.T) {
	m, g := fakeModel("Hel", "lo", " wor", "ld")
	_, ts := newTestServer(t, m, Options{})
	resp, body := post(t, ts.URL+"/v1/chat/completions",
		`{"model":"fake","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0,"top_p":0.5,"seed":7}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got ChatCompletion
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	prompt := len("<system>be brief\n<user>hi\n<assistant>")
	want := ChatCompletion{ID: "chatcmpl-test1", Object: "chat.completion", Created: 1700000000, Model: "fake",
		Choices: []ChatChoice{{Message: ChatMessage{Role: "assistant", Content: "Hello world"}, FinishReason: "stop"}},
		Usage:   NewUsage(prompt, 5)}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("response (-want +got):\n%s", d)
	}
	r := g.request()
	if r.Temperature != 0 || r.TopP != 0.5 || r.Seed != 7 || r.MaxTokens != 256-prompt || len(r.Tokens) != prompt {
		t.Errorf("engine request %+v: want temperature 0, top_p 0.5, seed 7, max tokens %d, %d prompt tokens", r, 256-prompt, prompt)
	}
}

func TestFinishReasonLength(t *testing.T) {
	m, _ := fakeModel("a", "b", "c", "d")
	_, ts := newTestServer(t, m, Options{})
	for _, body := range []string{
		`{"model":"fake","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`,
		`{"model":"fake","messages":[{"role":"user","content":"hi"}],"max_tokens":100,"max_completion_tokens":2}`,
	} {
		_, b := post(t, ts.URL+"/v1/chat/completions", body)
		var got ChatCompletion
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if got.Choices[0].Message.Content != "ab" || got.Choices[0].FinishReason != "length" || got.Usage.CompletionTokens != 2 {
			t.Errorf("%s: got %s; want content ab, finish length, 2 completion tokens", body, b)
		}
	}
}

// readSSE splits a stream into its data payloads, failing on any line that is not SSE framing.
func readSSE(t *testing.T, r io.Reader) []string {
	t.Helper()
	var events []string
	sc := bufio.NewScanner(r)
	blank := true
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if blank {
				t.Errorf("two blank lines in a row: events must be separated by exactly one")
			}
			blank = true
		case strings.HasPrefix(line, "data: "):
			if !blank {
				t.Errorf("event %q is not preceded by a blank line", line)
			}
			events = append(events, strings.TrimPrefix(line, "data: "))
			blank = false
		default:
			t.Errorf("line %q is not SSE data", line)
		}
	}
	if !blank {
		t.Error("the stream does not end with a blank line")
	}
	return events
}

// TestStreamGolden pins the exact bytes of streamed responses (run with -update to rewrite).
func TestStreamGolden(t *testing.T) {
	cases := []struct{ name, path, body string }{
		{"chat_stream", "/v1/chat/completions", `{"model":"fake","messages":[{"role":"user","content":"hi"}],"stream":true}`},
		{"chat_stream_usage", "/v1/chat/completions", `{"model":"fake","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":2}`},
		{"completion_stream_usage", "/v1/completions", `{"model":"fake","prompt":"once","stream":true,"stream_options":{"include_usage":true}}`},
		{"completion", "/v1/completions", `{"model":"fake","prompt":[1,2,3],"stop":" wor"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := fakeModel("Hel", "lo", " wor", "ld")
			_, ts := newTestServer(t, m, Options{})
			resp, body := post(t, ts.URL+tc.path, tc.body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if strings.Contains(tc.body, `"stream":true`) {
				if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream; charset=utf-8" {
					t.Errorf("Content-Type %q; want text/event-stream", ct)
				}
				events := readSSE(t, bytes.NewReader(body))
				if len(events) == 0 || events[len(events)-1] != "[DONE]" {
					t.Errorf("stream does not end with [DONE]: %q", events)
				}
				for _, e := range events[:len(events)-1] {
					if !json.Valid([]byte(e)) {
						t.Errorf("event %q is not JSON", e)
					}
				}
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, body, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./serve -run TestStreamGolden -update)", err)
			}
			if d := cmp.Diff(string(want), string(body)); d != "" {
				t.Errorf("%s differs (-want +got):\n%s", golden, d)
			}
		})
	}
}

// streamText sends a streaming chat request and returns the concatenated content and the finish
// reason.
func streamText(t *testing.T, url, body string) (text, finish string) {
	t.Helper()
	resp, b := post(t, url+"/v1/chat/completions", body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	for _, e := range readSSE(t, bytes.NewReader(b)) {
		if e == "[DONE]" {
			break
		}
		var c ChatChunk
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			t.Fatal(err)
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content != nil {
				text += *ch.Delta.Content
			}
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
	}
	return text, finish
}

func TestStopSequences(t *testing.T) {
	cases := []struct {
		name   string
		pieces []string
		stop   string // JSON
		text   string
		finish string
		tokens int // completion tokens: generation ends at the token that completes the stop
	}{
		{"within one token", []string{"ab", "cSTOPd", "e"}, `"STOP"`, "abc", "stop", 2},
		{"across two tokens", []string{"ab", "cST", "OPd", "e"}, `"STOP"`, "abc", "stop", 3},
		{"across four tokens", []string{"x", "S", "T", "O", "P", "y"}, `"STOP"`, "x", "stop", 5},
		{"false start released", []string{"a", "ST", "x", "STO", "y"}, `"STOP"`, "aSTxSTOy", "stop", 6},
		{"prefix at the end is flushed", []string{"a", "b", "ST"}, `"STOP"`, "abST", "stop", 4},
		{"earliest of a list", []string{"one ", "two ", "three"}, `["three","two"]`, "one ", "stop", 2},
		{"stop at the very start", []string{"END", "x"}, `["END"]`, "", "stop", 1},
		{"unicode", []string{"héllo ", "wö", "rld"}, `"örl"`, "héllo w", "stop", 3},
		{"no match", []string{"a", "b", "c"}, `"zz"`, "abc", "stop", 4},
		{"overlapping stops", []string{"aab", "ab"}, `["abab","aba"]`, "a", "stop", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := fakeModel(tc.pieces...)
			_, ts := newTestServer(t, m, Options{})
			req := `{"model":"fake","messages":[{"role":"user","content":"hi"}],"stop":` + tc.stop
			_, b := post(t, ts.URL+"/v1/chat/completions", req+`}`)
			var got ChatCompletion
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("%v: %s", err, b)
			}
			if c := got.Choices[0]; c.Message.Content != tc.text || c.FinishReason != tc.finish || got.Usage.CompletionTokens != tc.tokens {
				t.Errorf("non-streaming: %q, %s, %d tokens; want %q, %s, %d", c.Message.Content, c.FinishReason, got.Usage.CompletionTokens, tc.text, tc.finish, tc.tokens)
			}
			text, finish := streamText(t, ts.URL, req+`,"stream":true}`)
			if text != tc.text || finish != tc.finish {
				t.Errorf("streaming: %q, %s; want %q, %s", text, finish, tc.text, tc.finish)
			}
		})
	}
}

func TestStopScannerNeverLeaksAStopPrefix(t *testing.T) {
	// Whatever the split, text sent before the stop is found never contains the stop's start.
	full := "the quick STOP brown"
	for cut1 := 0; cut1 <= len(full); cut1++ {
		for cut2 := cut1; cut2 <= len(full); cut2++ {
			s := NewStopScanner([]string{"STOP"})
			var sent string
			stopped := false
			for _, p := range []string{full[:cut1], full[cut1:cut2], full[cut2:]} {
				out, st := s.Push(p)
				sent += out
				if st {
					stopped = true
					break
				}
			}
			if !stopped || sent != "the quick " {
				t.Fatalf("split at %d,%d: sent %q, stopped %v; want %q, true", cut1, cut2, sent, stopped, "the quick ")
			}
		}
	}
}

func TestAuth(t *testing.T) {
	m, _ := fakeModel("a")
	_, ts := newTestServer(t, m, Options{APIKeys: []string{"k1", "second-key"}})
	cases := []struct {
		name, path, key string
		status          int
	}{
		{"first key", "/v1/models", "Bearer k1", 200},
		{"second key", "/v1/models", "Bearer second-key", 200},
		{"prefix of a key", "/v1/models", "Bearer second", 401},
		{"no key", "/v1/models", "", 401},
		{"health is open", "/health", "", 200},
		{"metrics are open", "/metrics", "", 200},
		{"web page is open", "/", "", 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			if tc.key != "" {
				h["Authorization"] = tc.key
			}
			if resp, b := do(t, "GET", ts.URL+tc.path, "", h); resp.StatusCode != tc.status {
				t.Errorf("status %d; want %d (%s)", resp.StatusCode, tc.status, b)
			}
		})
	}
}

func TestModels(t *testing.T) {
	m, _ := fakeModel("a")
	_, ts := newTestServer(t, m, Options{})
	_, b := do(t, "GET", ts.URL+"/v1/models", "", nil)
	want := `{"object":"list","data":[{"id":"fake","object":"model","created":1700000000,"owned_by":"hippo"}]}` + "\n"
	if string(b) != want {
		t.Errorf("GET /v1/models = %s; want %s", b, want)
	}
	_, b = do(t, "GET", ts.URL+"/v1/models/fake", "", nil)
	if want := `{"id":"fake","object":"model","created":1700000000,"owned_by":"hippo"}` + "\n"; string(b) != want {
		t.Errorf("GET /v1/models/fake = %s; want %s", b, want)
	}
}

// TestQueueFull fills the one generation slot and the queue, then expects 429 with Retry-After.
func TestQueueFull(t *testing.T) {
	m, g := fakeModel("a", "b")
	g.gate = make(chan struct{})
	s, ts := newTestServer(t, m, Options{MaxQueue: 1})
	results := postChats(ts.URL, 2)
	waitFor(t, "one running and one queued", func() bool { return g.inFlight.Load() == 1 && s.waiting.Load() == 1 })
	if got := testutil.ToFloat64(s.Metrics().QueueDepth); got != 1 {
		t.Errorf("hippo_queue_depth = %v; want 1", got)
	}
	resp, b := post(t, ts.URL+"/v1/chat/completions", chatOK)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), `"queue_full"`) {
		t.Errorf("third request: %d, Retry-After %q, %s; want 429 queue_full with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	close(g.gate)
	for range 2 {
		if code := <-results; code != 200 {
			t.Errorf("queued request: status %d; want 200", code)
		}
	}
	if g.overlap.Load() {
		t.Error("two generations overlapped on one model")
	}
}

// postChats sends n chat requests (chatOK) to the server at base at once, in the background; each
// one's status code, or -1 when it could not be sent, arrives on the returned channel after its
// body was read.
func postChats(base string, n int) <-chan int {
	results := make(chan int, n)
	for range n {
		go func() {
			resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(chatOK))
			if err != nil {
				results <- -1
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results <- resp.StatusCode
		}()
	}
	return results
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestTimeout(t *testing.T) {
	m, g := fakeModel("a", "b", "c")
	g.delay = time.Hour
	_, ts := newTestServer(t, m, Options{Timeout: 50 * time.Millisecond})
	resp, b := post(t, ts.URL+"/v1/chat/completions", chatOK)
	if resp.StatusCode != 503 || !strings.Contains(string(b), `"timeout"`) {
		t.Errorf("non-streaming: %d %s; want 503 timeout", resp.StatusCode, b)
	}
	resp, b = post(t, ts.URL+"/v1/chat/completions", `{"model":"fake","messages":[{"role":"user","content":"hi"}],"stream":true}`)
	events := readSSE(t, bytes.NewReader(b))
	if resp.StatusCode != 200 || len(events) != 2 || !strings.Contains(events[1], `"error"`) {
		t.Errorf("streaming: %d %q; want the opening chunk, then an error event", resp.StatusCode, events)
	}
}

// TestClientDisconnect checks that a client going away mid-stream cancels its generation at once,
// and that the next request is served normally.
func TestClientDisconnect(t *testing.T) {
	m, g := fakeModel("a", "b", "c", "d", "e", "f", "g", "h")
	g.delay = 20 * time.Millisecond
	s, ts := newTestServer(t, m, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"fake","messages":[{"role":"user","content":"hi"}],"stream":true}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for range 3 { // the opening chunk and one token
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	resp.Body.Close()
	waitFor(t, "the generation to end", func() bool { return g.inFlight.Load() == 0 })
	if n := g.emitted.Load(); n >= 8 {
		t.Errorf("the generation ran to its end (%d tokens) after the client left; want it cancelled", n)
	}
	waitFor(t, "a 499 to be counted", func() bool {
		return testutil.ToFloat64(s.Metrics().Requests.WithLabelValues("/v1/chat/completions", "499")) == 1
	})
	g.delay = 0
	if resp, b := post(t, ts.URL+"/v1/chat/completions", chatOK); resp.StatusCode != 200 {
		t.Errorf("after a disconnect: %d %s", resp.StatusCode, b)
	}
}

func TestMetricsExposed(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, _ := fakeModel("a", "b", "c")
	s, ts := newTestServer(t, m, Options{Registry: reg})
	if resp, b := post(t, ts.URL+"/v1/chat/completions", chatOK); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	s.Metrics().ObserveNetwork("fake", 0, time.Millisecond)
	s.Metrics().ObserveSpec("fake", 4, 2)
	_, b := do(t, "GET", ts.URL+"/metrics", "", nil)
	for _, name := range []string{
		"hippo_requests_total", "hippo_prompt_tokens_total", "hippo_generated_tokens_total",
		"hippo_time_to_first_token_seconds_bucket", "hippo_inter_token_latency_seconds_bucket",
		"hippo_request_duration_seconds_bucket", "hippo_queue_wait_seconds_bucket", "hippo_forward_seconds_bucket",
		"hippo_sample_seconds_bucket", "hippo_queue_depth", "hippo_model_memory_bytes", "hippo_build_info",
		"hippo_network_seconds_bucket", "hippo_spec_drafted_tokens_total", "hippo_spec_accepted_tokens_total",
		"hippo_spec_drafted_by_position_total", "hippo_spec_accepted_by_position_total",
		"hippo_batch_size", "hippo_kv_cache_bytes", "hippo_kv_cache_capacity_bytes",
	} {
		if !strings.Contains(string(b), "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if got := testutil.ToFloat64(s.Metrics().GeneratedTokens.WithLabelValues("fake")); got != 3 {
		t.Errorf("hippo_generated_tokens_total = %v; want 3", got)
	}
	if got := testutil.ToFloat64(s.Metrics().PromptTokens.WithLabelValues("fake")); got != float64(len("<user>hi\n<assistant>")) {
		t.Errorf("hippo_prompt_tokens_total = %v", got)
	}
	if got := testutil.ToFloat64(s.Metrics().AcceptedByPosition.WithLabelValues("fake", "1")); got != 1 {
		t.Errorf("accepted at position 1 = %v; want 1", got)
	}
	if got := testutil.ToFloat64(s.Metrics().AcceptedByPosition.WithLabelValues("fake", "2")); got != 0 {
		t.Errorf("accepted at position 2 = %v; want 0", got)
	}
	if got := testutil.ToFloat64(s.Metrics().ModelMemory.WithLabelValues("fake")); got != 1234 {
		t.Errorf("hippo_model_memory_bytes = %v; want 1234", got)
	}
}

// TestObserveStats: a generation's steps feed the per-stage, per-hop and speculative collectors.
func TestObserveStats(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name  string
		st    engines.Stats
		count map[string]int // histogram series -> observations
		spec  [2]float64     // drafted, accepted
	}{
		{"standalone", engines.Stats{Steps: []engines.Step{{Forward: ms, Sample: ms}, {Forward: ms, Sample: ms}}},
			map[string]int{"forward 0": 2, "sample": 2}, [2]float64{}},
		{"pipeline 2 stages", engines.Stats{Steps: []engines.Step{{Forward: 2 * ms, StageForward: []time.Duration{ms, ms}, Network: ms}}},
			map[string]int{"forward 0": 1, "forward 1": 1, "network 0": 1, "sample": 1}, [2]float64{}},
		{"pipeline 3 stages", engines.Stats{Steps: []engines.Step{{StageForward: []time.Duration{ms, ms, ms}, Network: 2 * ms, Hops: []time.Duration{ms, ms}}}},
			map[string]int{"forward 0": 1, "forward 2": 1, "network 0": 1, "network 1": 1, "network all": 0, "sample": 1}, [2]float64{}},
		{"ring 3 stages", engines.Stats{Steps: []engines.Step{{StageForward: []time.Duration{ms, ms, ms}, Network: ms}}},
			map[string]int{"forward 0": 1, "network 0": 0, "network all": 1}, [2]float64{}},
		{"spec", engines.Stats{Steps: []engines.Step{{Forward: ms}, {Forward: ms}},
			Spec: &engines.SpecStats{Steps: []engines.SpecStep{{Drafted: 4, Accepted: 4}, {Drafted: 4, Accepted: 1}}}},
			map[string]int{"forward 0": 2, "sample": 0}, [2]float64{8, 5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMetrics(prometheus.NewRegistry())
			m.ObserveStats("x", tc.st)
			for series, want := range tc.count {
				var h prometheus.Observer
				switch kind, label, _ := strings.Cut(series, " "); kind {
				case "forward":
					h = m.Forward.WithLabelValues("x", label)
				case "network":
					h = m.Network.WithLabelValues("x", label)
				default:
					h = m.Sample.WithLabelValues("x")
				}
				var pb dto.Metric
				h.(prometheus.Metric).Write(&pb)
				if got := int(pb.GetHistogram().GetSampleCount()); got != want {
					t.Errorf("%s: %d observations; want %d", series, got, want)
				}
			}
			got := [2]float64{testutil.ToFloat64(m.Drafted.WithLabelValues("x")), testutil.ToFloat64(m.Accepted.WithLabelValues("x"))}
			if got != tc.spec {
				t.Errorf("drafted, accepted = %v; want %v", got, tc.spec)
			}
		})
	}
}

func TestIndexPage(t *testing.T) {
	m, _ := fakeModel("a")
	_, ts := newTestServer(t, m, Options{})
	resp, b := do(t, "GET", ts.URL+"/", "", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !bytes.Contains(b, []byte("/v1/chat/completions")) {
		t.Errorf("GET / = %d %q; want the chat page", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
