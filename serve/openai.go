package serve

// This file is the OpenAI wire format and its translation to and from the server's own request
// types. It is pure: no engine, no I/O. Everything the engine side needs leaves here as a
// ChatRequest or CompletionRequest; everything the client sees is built here from plain values.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
)

// MaxStops is how many stop sequences a request may give, as in OpenAI's API.
const MaxStops = 4

// Error is an OpenAI error object together with the HTTP status it is sent with.
type Error struct {
	Status  int     `json:"-"`
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// Error returns the message, so an *Error can travel as an error.
func (e *Error) Error() string { return e.Message }

// ErrorBody is the JSON body of an error response: {"error": {...}}.
type ErrorBody struct {
	Error *Error `json:"error"`
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// newError builds an error of OpenAI's type for the status.
func newError(status int, param, code, format string, args ...any) *Error {
	typ := "invalid_request_error"
	switch {
	case status == http.StatusTooManyRequests:
		typ = "rate_limit_error"
	case status >= 500:
		typ = "server_error"
	}
	return &Error{Status: status, Message: fmt.Sprintf(format, args...), Type: typ, Param: strPtr(param), Code: strPtr(code)}
}

// invalid is a 400 about one request parameter.
func invalid(param, format string, args ...any) *Error {
	return newError(http.StatusBadRequest, param, "invalid_value", format, args...)
}

// Message is one chat turn after translation: Role is system, user or assistant ("developer" is
// read as system) and Content is plain text.
type Message struct {
	Role, Content string
}

// Sampling is what a request asks of generation, whichever endpoint it came through.
type Sampling struct {
	// MaxTokens is the generation limit; 0 means the client gave none (the server fills the
	// context, or applies the endpoint's default).
	MaxTokens   int
	Temperature float64
	TopP        float64
	// Seed is set when HasSeed; without one the server draws a seed.
	Seed    uint64
	HasSeed bool
	Stop    []string
}

// ChatRequest is a validated POST /v1/chat/completions request.
type ChatRequest struct {
	Model        string
	Messages     []Message
	Stream       bool
	IncludeUsage bool
	Sampling
}

// CompletionRequest is a validated POST /v1/completions request: either Prompt text or, when
// PromptTokens is not nil, prompt token ids given by the client.
type CompletionRequest struct {
	Model        string
	Prompt       string
	PromptTokens []int
	Stream       bool
	IncludeUsage bool
	Sampling
}

// DefaultCompletionMaxTokens is the legacy completions endpoint's max_tokens default (OpenAI's).
const DefaultCompletionMaxTokens = 16

// fields decodes a JSON object into its members, rejecting anything that is not one object and
// any member not in known (OpenAI rejects unrecognized arguments too: a typo must not be ignored).
func fields(body []byte, known map[string]bool) (map[string]json.RawMessage, *Error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, newError(http.StatusBadRequest, "", "invalid_json", "request body is empty: send a JSON object")
	}
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&m); err != nil || m == nil {
		msg := "request body is not a JSON object"
		if err != nil {
			msg = fmt.Sprintf("request body is not valid JSON: %v", err)
		}
		return nil, newError(http.StatusBadRequest, "", "invalid_json", "%s", msg)
	}
	if dec.More() {
		return nil, newError(http.StatusBadRequest, "", "invalid_json", "request body has data after the JSON object")
	}
	for k := range m {
		if !known[k] {
			return nil, newError(http.StatusBadRequest, k, "unknown_parameter", "unrecognized request argument supplied: %s", k)
		}
	}
	return m, nil
}

// present reports whether the member is there and not null (OpenAI treats null as absent).
func present(m map[string]json.RawMessage, k string) bool {
	v, ok := m[k]
	return ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null"))
}

// get decodes member k into v when present, naming the parameter and the wanted type on error.
func get(m map[string]json.RawMessage, k string, v any, want string) *Error {
	if !present(m, k) {
		return nil
	}
	if err := json.Unmarshal(m[k], v); err != nil {
		return invalid(k, "%s: want %s, got %s", k, want, describe(m[k]))
	}
	return nil
}

// describe names the JSON type of a value for error messages.
func describe(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	s := string(raw)
	if len(s) > 24 {
		s = s[:24] + "..."
	}
	return "the number " + s
}

var commonParams = []string{
	"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop", "n",
	"user", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
}

func knownSet(extra ...string) map[string]bool {
	m := map[string]bool{}
	for _, k := range append(commonParams, extra...) {
		m[k] = true
	}
	return m
}

var (
	chatParams = knownSet("messages", "max_completion_tokens", "response_format", "tools", "tool_choice",
		"parallel_tool_calls", "functions", "function_call", "metadata", "store", "service_tier", "reasoning_effort")
	completionParams = knownSet("prompt", "echo", "suffix", "best_of")
)

// parseCommon reads the members both endpoints share.
func parseCommon(m map[string]json.RawMessage) (model string, stream, includeUsage bool, s Sampling, e *Error) {
	if !present(m, "model") {
		return "", false, false, s, invalid("model", "model is required: GET /v1/models lists the served models")
	}
	if e = get(m, "model", &model, "a string"); e != nil {
		return
	}
	if model == "" {
		return "", false, false, s, invalid("model", "model is empty: GET /v1/models lists the served models")
	}
	if e = get(m, "stream", &stream, "a boolean"); e != nil {
		return
	}
	if present(m, "stream_options") {
		if !stream {
			return "", false, false, s, invalid("stream_options", "stream_options is only allowed when stream is true")
		}
		var so struct {
			IncludeUsage *bool `json:"include_usage"`
		}
		dec := json.NewDecoder(bytes.NewReader(m["stream_options"]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&so); err != nil {
			return "", false, false, s, invalid("stream_options", "stream_options: want an object with an optional boolean include_usage: %v", err)
		}
		includeUsage = so.IncludeUsage != nil && *so.IncludeUsage
	}
	var n int64 = 1
	if e = get(m, "n", &n, "an integer"); e != nil {
		return
	}
	if n != 1 {
		return "", false, false, s, invalid("n", "n = %d: this server generates one choice per request; send n = 1 or leave it out", n)
	}
	s.Temperature, s.TopP = 1, 1
	if e = getFloat(m, "temperature", &s.Temperature, 0, 2); e != nil {
		return
	}
	if e = getFloat(m, "top_p", &s.TopP, 0, 1); e != nil {
		return
	}
	if present(m, "top_p") && s.TopP == 0 {
		return "", false, false, s, invalid("top_p", "top_p = 0 keeps no tokens: want a value in (0, 1]")
	}
	if present(m, "seed") {
		var seed int64
		if e = get(m, "seed", &seed, "an integer"); e != nil {
			return
		}
		s.Seed, s.HasSeed = uint64(seed), true
	}
	if s.Stop, e = parseStop(m); e != nil {
		return
	}
	for _, k := range []string{"presence_penalty", "frequency_penalty"} {
		var v float64
		if e = getFloat(m, k, &v, -2, 2); e != nil {
			return
		}
		if v != 0 {
			return "", false, false, s, invalid(k, "%s is not supported by this server: leave it out or send 0", k)
		}
	}
	if present(m, "logit_bias") {
		var lb map[string]float64
		if e = get(m, "logit_bias", &lb, "an object of token ids to numbers"); e != nil {
			return
		}
		if len(lb) > 0 {
			return "", false, false, s, invalid("logit_bias", "logit_bias is not supported by this server")
		}
	}
	if e = get(m, "user", new(string), "a string"); e != nil {
		return
	}
	return model, stream, includeUsage, s, nil
}

// getFloat reads a finite number in [lo, hi].
func getFloat(m map[string]json.RawMessage, k string, v *float64, lo, hi float64) *Error {
	if e := get(m, k, v, "a number"); e != nil {
		return e
	}
	if math.IsNaN(*v) || *v < lo || *v > hi {
		return invalid(k, "%s = %v: want a number in [%v, %v]", k, *v, lo, hi)
	}
	return nil
}

// getMaxTokens reads a positive token limit.
func getMaxTokens(m map[string]json.RawMessage, k string, v *int) *Error {
	if !present(m, k) {
		return nil
	}
	var n int64
	if e := get(m, k, &n, "a positive integer"); e != nil {
		return e
	}
	if n < 1 {
		return invalid(k, "%s = %d: want at least 1", k, n)
	}
	if n > math.MaxInt32 {
		n = math.MaxInt32 // the context check reports it as too long
	}
	*v = int(n)
	return nil
}

// parseStop reads stop: a string or a list of up to MaxStops non-empty strings.
func parseStop(m map[string]json.RawMessage) ([]string, *Error) {
	if !present(m, "stop") {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(m["stop"], &one); err == nil {
		if one == "" {
			return nil, invalid("stop", "stop is an empty string: give a non-empty string or leave it out")
		}
		return []string{one}, nil
	}
	var list []string
	if err := json.Unmarshal(m["stop"], &list); err != nil {
		return nil, invalid("stop", "stop: want a string or an array of strings, got %s", describe(m["stop"]))
	}
	if len(list) > MaxStops {
		return nil, invalid("stop", "stop has %d sequences: at most %d are allowed", len(list), MaxStops)
	}
	for i, s := range list {
		if s == "" {
			return nil, invalid("stop", "stop[%d] is an empty string", i)
		}
	}
	if len(list) == 0 {
		return nil, nil
	}
	return list, nil
}

// unsupported rejects OpenAI features this server does not implement when the client turned them
// on, rather than silently answering as if it had honoured them.
func unsupported(m map[string]json.RawMessage, names ...string) *Error {
	for _, k := range names {
		if !present(m, k) {
			continue
		}
		raw := bytes.TrimSpace(m[k])
		switch string(raw) {
		case "false", "0", "[]", "{}", `"none"`, `""`:
			continue
		}
		return invalid(k, "%s is not supported by this server: leave it out", k)
	}
	return nil
}

// wireMessage is a chat message as clients send it. Content is a string or an array of content
// parts; only text parts are accepted.
type wireMessage struct {
	Role    *string         `json:"role"`
	Content json.RawMessage `json:"content"`
	Name    string          `json:"name,omitempty"`
}

// ParseChatRequest validates the body of POST /v1/chat/completions. The returned error is an
// OpenAI 400 that names the offending parameter.
func ParseChatRequest(body []byte) (ChatRequest, *Error) {
	var r ChatRequest
	m, e := fields(body, chatParams)
	if e != nil {
		return r, e
	}
	if r.Model, r.Stream, r.IncludeUsage, r.Sampling, e = parseCommon(m); e != nil {
		return ChatRequest{}, e
	}
	if e := getMaxTokens(m, "max_tokens", &r.MaxTokens); e != nil {
		return ChatRequest{}, e
	}
	if present(m, "max_completion_tokens") {
		var n int
		if e := getMaxTokens(m, "max_completion_tokens", &n); e != nil {
			return ChatRequest{}, e
		}
		r.MaxTokens = n // the newer name wins, as in OpenAI's API
	}
	if e := unsupported(m, "logprobs", "top_logprobs", "tools", "functions", "tool_choice", "function_call"); e != nil {
		return ChatRequest{}, e
	}
	if present(m, "response_format") {
		var rf struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(m["response_format"], &rf); err != nil || rf.Type != "text" {
			return ChatRequest{}, invalid("response_format", `response_format: only {"type": "text"} is supported by this server`)
		}
	}
	if !present(m, "messages") {
		return ChatRequest{}, invalid("messages", "messages is required: an array of {role, content} objects")
	}
	var wire []json.RawMessage
	if e := get(m, "messages", &wire, "an array of message objects"); e != nil {
		return ChatRequest{}, e
	}
	if len(wire) == 0 {
		return ChatRequest{}, invalid("messages", "messages is empty: give at least one message")
	}
	for i, raw := range wire {
		msg, e := parseMessage(raw, i)
		if e != nil {
			return ChatRequest{}, e
		}
		r.Messages = append(r.Messages, msg)
	}
	return r, nil
}

func parseMessage(raw json.RawMessage, i int) (Message, *Error) {
	param := fmt.Sprintf("messages[%d]", i)
	var w wireMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&w); err != nil {
		return Message{}, invalid(param, "%s: want an object with role and content: %v", param, err)
	}
	if bytes.TrimSpace(raw)[0] != '{' {
		return Message{}, invalid(param, "%s: want an object with role and content, got %s", param, describe(raw))
	}
	if w.Role == nil {
		return Message{}, invalid(param+".role", "%s.role is required (system, developer, user or assistant)", param)
	}
	role := *w.Role
	switch role {
	case "system", "user", "assistant":
	case "developer":
		role = "system"
	case "tool", "function":
		return Message{}, invalid(param+".role", "%s.role %q: tool messages are not supported by this server", param, role)
	default:
		return Message{}, invalid(param+".role", "%s.role %q is not a role: use system, developer, user or assistant", param, role)
	}
	content, e := parseContent(w.Content, param+".content")
	if e != nil {
		return Message{}, e
	}
	return Message{Role: role, Content: content}, nil
}

// parseContent reads a string, or an array of {"type": "text", "text": ...} parts joined.
func parseContent(raw json.RawMessage, param string) (string, *Error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", invalid(param, "%s is required: a string or an array of text parts", param)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", invalid(param, "%s: want a string or an array of text parts, got %s", param, describe(raw))
	}
	var b strings.Builder
	for j, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return "", invalid(fmt.Sprintf("%s[%d]", param, j), "%s[%d]: only text parts are supported by this server (type %q)", param, j, p.Type)
		}
		b.WriteString(*p.Text)
	}
	return b.String(), nil
}

// ParseCompletionRequest validates the body of POST /v1/completions. prompt is a string, an array
// of one string, or an array of token ids.
func ParseCompletionRequest(body []byte) (CompletionRequest, *Error) {
	var r CompletionRequest
	m, e := fields(body, completionParams)
	if e != nil {
		return r, e
	}
	if r.Model, r.Stream, r.IncludeUsage, r.Sampling, e = parseCommon(m); e != nil {
		return CompletionRequest{}, e
	}
	r.MaxTokens = DefaultCompletionMaxTokens
	if e := getMaxTokens(m, "max_tokens", &r.MaxTokens); e != nil {
		return CompletionRequest{}, e
	}
	if e := unsupported(m, "echo", "suffix", "logprobs"); e != nil {
		return CompletionRequest{}, e
	}
	if present(m, "best_of") {
		var b int64
		if e := get(m, "best_of", &b, "an integer"); e != nil {
			return CompletionRequest{}, e
		}
		if b != 1 {
			return CompletionRequest{}, invalid("best_of", "best_of = %d: this server generates one choice; send 1 or leave it out", b)
		}
	}
	if !present(m, "prompt") {
		return CompletionRequest{}, invalid("prompt", "prompt is required: a string, an array of one string, or an array of token ids")
	}
	raw := m["prompt"]
	if err := json.Unmarshal(raw, &r.Prompt); err == nil {
		if r.Prompt == "" {
			return CompletionRequest{}, invalid("prompt", "prompt is empty")
		}
		return r, nil
	}
	var texts []string
	if err := json.Unmarshal(raw, &texts); err == nil && len(texts) > 0 {
		if len(texts) != 1 {
			return CompletionRequest{}, invalid("prompt", "prompt has %d strings: this server completes one prompt per request", len(texts))
		}
		if texts[0] == "" {
			return CompletionRequest{}, invalid("prompt", "prompt is empty")
		}
		r.Prompt = texts[0]
		return r, nil
	}
	var ids []int64
	if err := json.Unmarshal(raw, &ids); err != nil || len(ids) == 0 {
		return CompletionRequest{}, invalid("prompt", "prompt: want a non-empty string, an array of one string, or an array of token ids, got %s", describe(raw))
	}
	r.PromptTokens = make([]int, len(ids))
	for i, id := range ids {
		if id < 0 || id > math.MaxInt32 {
			return CompletionRequest{}, invalid("prompt", "prompt[%d] = %d is not a token id", i, id)
		}
		r.PromptTokens[i] = int(id)
	}
	return r, nil
}

// Usage is the token accounting of one request.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// NewUsage fills TotalTokens.
func NewUsage(prompt, completion int) Usage {
	return Usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
}

// optionalUsage is usage on a stream chunk: absent without include_usage, null on every chunk
// but the last with it, as OpenAI sends.
type optionalUsage struct {
	set bool
	u   *Usage
}

func (o optionalUsage) IsZero() bool { return !o.set }

func (o optionalUsage) MarshalJSON() ([]byte, error) { return json.Marshal(o.u) }

// ChatMessage is the assistant message of a non-streaming chat response.
type ChatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ChatChoice is the one choice of a chat completion.
type ChatChoice struct {
	Index        int         `json:"index"`
	Message      ChatMessage `json:"message"`
	Logprobs     *struct{}   `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

// ChatCompletion is the body of a non-streaming chat response.
type ChatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []ChatChoice `json:"choices"`
	Usage   Usage        `json:"usage"`
}

// Delta is the change a stream chunk carries.
type Delta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// ChunkChoice is the one choice of a chat stream chunk.
type ChunkChoice struct {
	Index        int       `json:"index"`
	Delta        Delta     `json:"delta"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

// ChatChunk is one event of a streaming chat response.
type ChatChunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []ChunkChoice `json:"choices"`
	Usage   optionalUsage `json:"usage,omitzero"`
}

// TextChoice is the one choice of a text completion (streamed or not).
type TextChoice struct {
	Text         string    `json:"text"`
	Index        int       `json:"index"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

// TextCompletion is the body of a completions response, and each event of its stream.
type TextCompletion struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []TextChoice  `json:"choices"`
	Usage   optionalUsage `json:"usage,omitzero"`
}

// ModelObject describes one served model.
type ModelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// ModelList is the body of GET /v1/models.
type ModelList struct {
	Object string        `json:"object"`
	Data   []ModelObject `json:"data"`
}

// Meta identifies one response: its id, creation time (Unix seconds) and model.
type Meta struct {
	ID      string
	Created int64
	Model   string
}

// format builds one endpoint's response objects. Both endpoints stream the same way: an opening
// event, one event per piece of text, a closing event with the finish reason, and with
// include_usage a last event with the usage and no choices.
type format interface {
	// open is the first stream event (nil when the endpoint has none).
	open(m Meta, withUsage bool) any
	delta(m Meta, text string, withUsage bool) any
	finish(m Meta, reason string, withUsage bool) any
	usage(m Meta, u Usage) any
	complete(m Meta, text, reason string, u Usage) any
}

type chatFormat struct{}

func usageField(withUsage bool) optionalUsage { return optionalUsage{set: withUsage} }

func (chatFormat) chunk(m Meta, d Delta, reason *string, withUsage bool) ChatChunk {
	return ChatChunk{ID: m.ID, Object: "chat.completion.chunk", Created: m.Created, Model: m.Model,
		Choices: []ChunkChoice{{Delta: d, FinishReason: reason}}, Usage: usageField(withUsage)}
}

func (f chatFormat) open(m Meta, withUsage bool) any {
	empty := ""
	return f.chunk(m, Delta{Role: "assistant", Content: &empty}, nil, withUsage)
}

func (f chatFormat) delta(m Meta, text string, withUsage bool) any {
	return f.chunk(m, Delta{Content: &text}, nil, withUsage)
}

func (f chatFormat) finish(m Meta, reason string, withUsage bool) any {
	return f.chunk(m, Delta{}, &reason, withUsage)
}

func (chatFormat) usage(m Meta, u Usage) any {
	return ChatChunk{ID: m.ID, Object: "chat.completion.chunk", Created: m.Created, Model: m.Model,
		Choices: []ChunkChoice{}, Usage: optionalUsage{set: true, u: &u}}
}

func (chatFormat) complete(m Meta, text, reason string, u Usage) any {
	return ChatCompletion{ID: m.ID, Object: "chat.completion", Created: m.Created, Model: m.Model,
		Choices: []ChatChoice{{Message: ChatMessage{Role: "assistant", Content: text}, FinishReason: reason}},
		Usage:   u}
}

type completionFormat struct{}

func (completionFormat) event(m Meta, text string, reason *string, withUsage bool) TextCompletion {
	return TextCompletion{ID: m.ID, Object: "text_completion", Created: m.Created, Model: m.Model,
		Choices: []TextChoice{{Text: text, FinishReason: reason}}, Usage: usageField(withUsage)}
}

func (completionFormat) open(Meta, bool) any { return nil }

func (f completionFormat) delta(m Meta, text string, withUsage bool) any {
	return f.event(m, text, nil, withUsage)
}

func (f completionFormat) finish(m Meta, reason string, withUsage bool) any {
	return f.event(m, "", &reason, withUsage)
}

func (completionFormat) usage(m Meta, u Usage) any {
	return TextCompletion{ID: m.ID, Object: "text_completion", Created: m.Created, Model: m.Model,
		Choices: []TextChoice{}, Usage: optionalUsage{set: true, u: &u}}
}

func (completionFormat) complete(m Meta, text, reason string, u Usage) any {
	return TextCompletion{ID: m.ID, Object: "text_completion", Created: m.Created, Model: m.Model,
		Choices: []TextChoice{{Text: text, FinishReason: &reason}}, Usage: optionalUsage{set: true, u: &u}}
}
