package serve

import (
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseChatRequest(t *testing.T) {
	cases := []struct {
		name string
		body string
		want ChatRequest
	}{
		{"defaults", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
			ChatRequest{Model: "m", Messages: []Message{{"user", "hi"}}, Sampling: Sampling{Temperature: 1, TopP: 1}}},
		{"everything", `{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":"ok"}],
			"stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"temperature":0.5,"top_p":0.9,"seed":-1,"stop":["x","y"],"n":1,"user":"u","presence_penalty":0,"logprobs":false,"response_format":{"type":"text"}}`,
			ChatRequest{Model: "m", Messages: []Message{{"system", "be brief"}, {"user", "ab"}, {"assistant", "ok"}}, Stream: true, IncludeUsage: true,
				Sampling: Sampling{MaxTokens: 5, Temperature: 0.5, TopP: 0.9, Seed: 1<<64 - 1, HasSeed: true, Stop: []string{"x", "y"}}}},
		{"max_completion_tokens wins", `{"model":"m","messages":[{"role":"user","content":""}],"max_tokens":5,"max_completion_tokens":7}`,
			ChatRequest{Model: "m", Messages: []Message{{"user", ""}}, Sampling: Sampling{MaxTokens: 7, Temperature: 1, TopP: 1}}},
		{"nulls are absent", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":null,"stop":null,"temperature":null,"seed":null}`,
			ChatRequest{Model: "m", Messages: []Message{{"user", "hi"}}, Sampling: Sampling{Temperature: 1, TopP: 1}}},
		{"stop string", `{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"\n\n"}`,
			ChatRequest{Model: "m", Messages: []Message{{"user", "hi"}}, Sampling: Sampling{Temperature: 1, TopP: 1, Stop: []string{"\n\n"}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, e := ParseChatRequest([]byte(tc.body))
			if e != nil {
				t.Fatalf("ParseChatRequest: %v", e)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("ParseChatRequest (-want +got):\n%s", d)
			}
		})
	}
}

func TestParseCompletionRequest(t *testing.T) {
	cases := []struct {
		name string
		body string
		want CompletionRequest
	}{
		{"string", `{"model":"m","prompt":"once"}`,
			CompletionRequest{Model: "m", Prompt: "once", Sampling: Sampling{MaxTokens: DefaultCompletionMaxTokens, Temperature: 1, TopP: 1}}},
		{"one string in a list", `{"model":"m","prompt":["once"],"max_tokens":3}`,
			CompletionRequest{Model: "m", Prompt: "once", Sampling: Sampling{MaxTokens: 3, Temperature: 1, TopP: 1}}},
		{"token ids", `{"model":"m","prompt":[1,2,3],"best_of":1,"echo":false}`,
			CompletionRequest{Model: "m", PromptTokens: []int{1, 2, 3}, Sampling: Sampling{MaxTokens: DefaultCompletionMaxTokens, Temperature: 1, TopP: 1}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, e := ParseCompletionRequest([]byte(tc.body))
			if e != nil {
				t.Fatalf("ParseCompletionRequest: %v", e)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("ParseCompletionRequest (-want +got):\n%s", d)
			}
		})
	}
}

// checkParsed holds for every request the decoder accepts, and every error it returns.
func checkParsed(t *testing.T, model string, s Sampling, e *Error) {
	if e != nil {
		if e.Status != http.StatusBadRequest || e.Message == "" || e.Type != "invalid_request_error" {
			t.Fatalf("error %+v: want a 400 invalid_request_error with a message", e)
		}
		return
	}
	if model == "" || s.MaxTokens < 0 || s.Temperature < 0 || s.Temperature > 2 || !(s.TopP > 0 && s.TopP <= 1) || len(s.Stop) > MaxStops {
		t.Fatalf("accepted an invalid request: model %q, %+v", model, s)
	}
	for _, st := range s.Stop {
		if st == "" {
			t.Fatal("accepted an empty stop sequence")
		}
	}
}

func FuzzParseChatRequest(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","messages":[{"role":"system","content":[{"type":"text","text":"x"}]}],"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["a","b"],"max_tokens":3,"temperature":0.2,"top_p":0.5,"seed":3,"n":1}`,
		`{"model":"m","messages":[{"role":"user","content":null}],"max_completion_tokens":1e400}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":2},"tools":[]}`,
		`[`, `null`, `{"model":"m","messages":[]}{}`, "{\"model\":\"\xff\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, e := ParseChatRequest(body)
		checkParsed(t, r.Model, r.Sampling, e)
		if e == nil {
			if len(r.Messages) == 0 {
				t.Fatal("accepted a request without messages")
			}
			for _, m := range r.Messages {
				if m.Role != "system" && m.Role != "user" && m.Role != "assistant" {
					t.Fatalf("accepted role %q", m.Role)
				}
			}
		}
	})
}

func FuzzParseCompletionRequest(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","prompt":"hi"}`, `{"model":"m","prompt":["hi"]}`, `{"model":"m","prompt":[1,2]}`,
		`{"model":"m","prompt":[-1]}`, `{"model":"m","prompt":[]}`, `{"model":"m","prompt":"x","echo":true}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, e := ParseCompletionRequest(body)
		checkParsed(t, r.Model, r.Sampling, e)
		if e == nil && r.Prompt == "" && len(r.PromptTokens) == 0 {
			t.Fatal("accepted a request without a prompt")
		}
		for _, id := range r.PromptTokens {
			if id < 0 {
				t.Fatalf("accepted token id %d", id)
			}
		}
	})
}
