// Package serve is Hippo's OpenAI-compatible HTTP server: chat and text completions (streamed as
// Server-Sent Events or not), model listing, bearer-key auth, a bounded queue in front of each
// model, per-request timeouts, Prometheus metrics on an explicit registry, a small web chat, and
// the choice of the best configuration from a sweep's results.
//
// The OpenAI wire format lives in openai.go and never reaches the engine; the engine is reached
// through Generator and Tokenizer, so tests can serve a hand-written fake.
package serve

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hippo-bench/hippo/engines"
	"github.com/hippo-bench/hippo/engines/tokenizer"
)

// Defaults of Options.
const (
	DefaultMaxQueue = 32
	DefaultTimeout  = 10 * time.Minute
	DefaultMaxBody  = 1 << 20
	DefaultContext  = 4096
	// DefaultMaxTokens is the completion length of a chat request that omits max_tokens (capped by
	// the context): mlx_lm.server's default. Filling the context instead (thousands of tokens)
	// would let one casual request hold a batch row for minutes.
	DefaultMaxTokens = 512
	// DefaultWriteTimeout is how long a streamed write may block on a client that stopped
	// reading before the server drops it and frees its generation.
	DefaultWriteTimeout = 30 * time.Second
	// streamBuffer is how many tokens a stream holds between the generator and the writer.
	streamBuffer = 64
)

// Options configures New. Only Models is required.
type Options struct {
	Models []Model
	// APIKeys are the accepted bearer keys for /v1/*; none means the API is open.
	APIKeys []string
	// MaxQueue bounds the generation requests waiting for a model (over all models); a request
	// beyond it gets 429 with Retry-After. 0 means DefaultMaxQueue.
	MaxQueue int
	// Timeout bounds one request, queueing included. 0 means DefaultTimeout.
	Timeout time.Duration
	// WriteTimeout bounds one write of a streamed response: a client that reads nothing for that
	// long is dropped and its generation cancelled. 0 means DefaultWriteTimeout.
	WriteTimeout time.Duration
	// MaxBody bounds a request body in bytes (413 beyond). 0 means DefaultMaxBody.
	MaxBody int64
	// Registry receives the metrics and is what /metrics serves; nil makes a private one.
	Registry *prometheus.Registry
	// Logger gets one line per generation request and the server's warnings; nil discards.
	Logger *slog.Logger
	// Now and NewID make responses reproducible in tests; nil means the clock and random ids.
	Now   func() time.Time
	NewID func() string
}

// Server serves the models of its Options. It is an http.Handler.
type Server struct {
	models   []*served
	byID     map[string]*served
	keys     [][sha256.Size]byte
	maxQueue int64
	waiting  atomic.Int64
	timeout  time.Duration
	writeTO  time.Duration
	maxBody  int64
	metrics  *Metrics
	log      *slog.Logger
	now      func() time.Time
	newID    func() string
	mux      *http.ServeMux
}

// served is a model plus what the server keeps for it.
type served struct {
	Model
	// slot holds a token per generation running: one at a time, or up to MaxBatch for a
	// generator that batches (Batching).
	slot chan struct{}
	eos  map[int]bool
	// running and positions count the generations in progress and the positions their KV
	// caches hold, for the occupancy metrics of a Generator that is not an Occupier.
	running, positions atomic.Int64
}

// occupancy is what m holds now: sequences decoding, their KV bytes, and the KV bytes it may hold.
func (m *served) occupancy() (int, int64, int64) {
	if o, ok := m.Generator.(Occupier); ok {
		return o.Occupancy()
	}
	if m.KVBytes == nil {
		return int(m.running.Load()), 0, 0
	}
	var kv int64
	if p := m.positions.Load(); p > 0 {
		kv = m.KVBytes(int(p))
	}
	return int(m.running.Load()), kv, m.KVBytes(m.Context)
}

// New checks o and builds a Server.
func New(o Options) (*Server, error) {
	if len(o.Models) == 0 {
		return nil, errors.New("serve: no models: give at least one")
	}
	s := &Server{
		byID: map[string]*served{}, maxQueue: int64(o.MaxQueue), timeout: o.Timeout, writeTO: o.WriteTimeout, maxBody: o.MaxBody,
		log: o.Logger, now: o.Now, newID: o.NewID,
	}
	if s.maxQueue <= 0 {
		s.maxQueue = DefaultMaxQueue
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.writeTO <= 0 {
		s.writeTO = DefaultWriteTimeout
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBody
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.newID == nil {
		s.newID = randomID
	}
	reg := o.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s.metrics = NewMetrics(reg)
	created := s.now()
	for _, m := range o.Models {
		if m.ID == "" || m.Generator == nil || m.Tokenizer == nil {
			return nil, fmt.Errorf("serve: model %q needs an id, a generator and a tokenizer", m.ID)
		}
		if _, dup := s.byID[m.ID]; dup {
			return nil, fmt.Errorf("serve: model id %q is given twice: ids must be unique", m.ID)
		}
		if m.Context <= 0 {
			m.Context = DefaultContext
		}
		if m.Created.IsZero() {
			m.Created = created
		}
		slots := 1
		if b, ok := m.Generator.(Batching); ok {
			slots = max(1, b.MaxBatch())
		}
		sv := &served{Model: m, slot: make(chan struct{}, slots), eos: map[int]bool{}}
		for _, id := range m.Tokenizer.EOS() {
			sv.eos[id] = true
		}
		s.models = append(s.models, sv)
		s.byID[m.ID] = sv
		s.metrics.ModelMemory.WithLabelValues(m.ID).Set(float64(m.MemoryBytes))
		// Zero series, so dashboards show 0 instead of "no data" before the first request.
		s.metrics.PromptTokens.WithLabelValues(m.ID)
		s.metrics.GeneratedTokens.WithLabelValues(m.ID)
		s.metrics.watch(m.ID, sv.occupancy)
	}
	for _, k := range o.APIKeys {
		if k == "" {
			return nil, errors.New("serve: an API key is empty")
		}
		s.keys = append(s.keys, sha256.Sum256([]byte(k)))
	}
	if len(s.keys) == 0 {
		s.log.Warn("no API key configured: the API is open to anyone who can reach it")
	}
	s.routes(reg)
	return s, nil
}

// Metrics are the server's collectors, for feeding the pipeline and speculative hooks.
func (s *Server) Metrics() *Metrics { return s.metrics }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) routes(reg *prometheus.Registry) {
	s.mux = http.NewServeMux()
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	s.handle("/v1/chat/completions", "POST", true, s.chat)
	s.handle("/v1/completions", "POST", true, s.completions)
	s.handle("/v1/models", "GET", true, s.listModels)
	s.handle("/v1/models/{id...}", "GET", true, s.getModel)
	s.handle("/health", "GET", false, s.health)
	s.handle("/metrics", "GET", false, func(w *recorder, r *http.Request) { metrics.ServeHTTP(w, r) })
	s.handle("/{$}", "GET", false, serveIndex)
	s.handle("/", "", false, func(w *recorder, r *http.Request) {
		writeError(w, newError(http.StatusNotFound, "", "not_found", "no route for %s %s: see GET /v1/models, POST /v1/chat/completions, POST /v1/completions", r.Method, r.URL.Path))
	})
}

// recorder remembers the status a handler sent, for metrics and logs.
type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and write deadlines.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// statusClientClosed is recorded when the client went away before the response was complete.
const statusClientClosed = 499

// handle registers h for path, counting and timing requests per endpoint, checking the method
// (an OpenAI-shaped 405 otherwise) and, with auth, the bearer key.
func (s *Server) handle(path, method string, auth bool, h func(*recorder, *http.Request)) {
	endpoint := path
	if path == "/" {
		endpoint = "other"
	}
	s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		defer func() {
			code := rec.code
			if code == 0 {
				code = http.StatusOK
			}
			s.metrics.Requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
			s.metrics.RequestDuration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
		}()
		if method != "" && r.Method != method && !(method == "GET" && r.Method == "HEAD") {
			rec.Header().Set("Allow", method)
			writeError(rec, newError(http.StatusMethodNotAllowed, "", "method_not_allowed", "%s %s is not allowed: use %s", r.Method, r.URL.Path, method))
			return
		}
		if auth && !s.authorized(r) {
			rec.Header().Set("WWW-Authenticate", `Bearer realm="hippo"`)
			writeError(rec, newError(http.StatusUnauthorized, "", "invalid_api_key", "incorrect or missing API key: send the header Authorization: Bearer <key> with a key the server was started with ($HIPPO_API_KEY or --api-key-file)"))
			return
		}
		h(rec, r)
	})
}

// authorized compares the bearer key with every configured key in constant time (over hashes, so
// the comparison does not reveal key lengths either).
func (s *Server) authorized(r *http.Request) bool {
	if len(s.keys) == 0 {
		return true
	}
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(key)))
	match := 0
	for _, k := range s.keys {
		match |= subtle.ConstantTimeCompare(got[:], k[:])
	}
	return match == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.Encode(v) // a failed write means the client left; nothing to tell it
}

func writeError(w http.ResponseWriter, e *Error) {
	if e.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.Status, ErrorBody{Error: e})
}

// readBody reads at most maxBody bytes; more is a 413.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *Error) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return nil, newError(http.StatusBadRequest, "", "invalid_content_type", "Content-Type %q: send application/json", ct)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, newError(http.StatusRequestEntityTooLarge, "", "request_too_large", "request body is larger than %d bytes (--max-body)", s.maxBody)
	}
	if err != nil {
		return nil, newError(http.StatusBadRequest, "", "invalid_body", "read request body: %v", err)
	}
	return body, nil
}

func (s *Server) model(id string) (*served, *Error) {
	m, ok := s.byID[id]
	if !ok {
		return nil, newError(http.StatusNotFound, "model", "model_not_found", "the model %q does not exist: this server serves %s", id, strings.Join(s.modelIDs(), ", "))
	}
	return m, nil
}

func (s *Server) modelIDs() []string {
	var ids []string
	for _, m := range s.models {
		ids = append(ids, m.ID)
	}
	return ids
}

func (s *Server) listModels(w *recorder, r *http.Request) {
	list := ModelList{Object: "list", Data: []ModelObject{}}
	for _, m := range s.models {
		list.Data = append(list.Data, modelObject(m))
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) getModel(w *recorder, r *http.Request) {
	m, e := s.model(r.PathValue("id"))
	if e != nil {
		writeError(w, e)
		return
	}
	writeJSON(w, http.StatusOK, modelObject(m))
}

func modelObject(m *served) ModelObject {
	return ModelObject{ID: m.ID, Object: "model", Created: m.Created.Unix(), OwnedBy: "hippo"}
}

func (s *Server) health(w *recorder, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "models": s.modelIDs(), "queue_depth": s.waiting.Load()})
}

func (s *Server) chat(w *recorder, r *http.Request) {
	start := time.Now()
	body, e := s.readBody(w, r)
	if e != nil {
		writeError(w, e)
		return
	}
	req, e := ParseChatRequest(body)
	if e != nil {
		writeError(w, e)
		return
	}
	m, e := s.model(req.Model)
	if e != nil {
		writeError(w, e)
		return
	}
	msgs := make([]tokenizer.Message, len(req.Messages))
	for i, msg := range req.Messages {
		msgs[i] = tokenizer.Message{Role: msg.Role, Content: msg.Content}
	}
	text, err := m.Tokenizer.ApplyChatTemplate(msgs, true)
	if err != nil {
		writeError(w, newError(http.StatusBadRequest, "messages", "invalid_messages", "%v", err))
		return
	}
	// The template writes any BOS itself.
	prompt := m.Tokenizer.Encode(text, false)
	s.generate(w, r, job{
		endpoint: "chat", model: m, prompt: prompt, Sampling: req.Sampling, stream: req.Stream,
		includeUsage: req.IncludeUsage, format: chatFormat{}, idPrefix: "chatcmpl-", start: start,
	})
}

func (s *Server) completions(w *recorder, r *http.Request) {
	start := time.Now()
	body, e := s.readBody(w, r)
	if e != nil {
		writeError(w, e)
		return
	}
	req, e := ParseCompletionRequest(body)
	if e != nil {
		writeError(w, e)
		return
	}
	m, e := s.model(req.Model)
	if e != nil {
		writeError(w, e)
		return
	}
	prompt := req.PromptTokens
	if prompt == nil {
		prompt = m.Tokenizer.Encode(req.Prompt, true)
	}
	vocab := m.Tokenizer.VocabSize()
	for i, id := range prompt {
		if id >= vocab {
			writeError(w, invalid("prompt", "prompt[%d] = %d is not a token id of %s (vocabulary of %d)", i, id, m.ID, vocab))
			return
		}
	}
	s.generate(w, r, job{
		endpoint: "completions", model: m, prompt: prompt, Sampling: req.Sampling, stream: req.Stream,
		includeUsage: req.IncludeUsage, format: completionFormat{}, idPrefix: "cmpl-", start: start,
	})
}

// job is one generation request after translation.
type job struct {
	endpoint string
	model    *served
	prompt   []int
	Sampling
	stream, includeUsage bool
	format               format
	idPrefix             string
	start                time.Time
}

// errQueueFull is returned by acquire when MaxQueue requests already wait.
var errQueueFull = errors.New("serve: queue full")

// acquire waits for m's generation slot. The returned release must be called once done.
func (s *Server) acquire(ctx context.Context, m *served) (release func(), err error) {
	release = func() { <-m.slot }
	select {
	case m.slot <- struct{}{}:
		return release, nil
	default:
	}
	if s.waiting.Add(1) > s.maxQueue {
		s.waiting.Add(-1)
		return nil, errQueueFull
	}
	s.metrics.QueueDepth.Inc()
	defer func() {
		s.waiting.Add(-1)
		s.metrics.QueueDepth.Dec()
	}()
	select {
	case m.slot <- struct{}{}:
		return release, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// generate runs j and writes the response: one JSON object, or an SSE stream.
func (s *Server) generate(w *recorder, r *http.Request, j job) {
	m := j.model
	if len(j.prompt) >= m.Context {
		param := "messages"
		if j.endpoint == "completions" {
			param = "prompt"
		}
		writeError(w, newError(http.StatusBadRequest, param, "context_length_exceeded",
			"this model's maximum context length is %d tokens, but the prompt has %d tokens: shorten it", m.Context, len(j.prompt)))
		return
	}
	if j.MaxTokens == 0 {
		j.MaxTokens = min(DefaultMaxTokens, m.Context-len(j.prompt))
	}
	if len(j.prompt)+j.MaxTokens > m.Context {
		writeError(w, newError(http.StatusBadRequest, "max_tokens", "context_length_exceeded",
			"this model's maximum context length is %d tokens, but %d were requested (%d in the prompt, %d for the completion): lower max_tokens",
			m.Context, len(j.prompt)+j.MaxTokens, len(j.prompt), j.MaxTokens))
		return
	}
	if !j.HasSeed {
		j.Seed = mrand.Uint64()
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	meta := Meta{ID: j.idPrefix + s.newID(), Created: s.now().Unix(), Model: m.ID}
	log := s.log.With("id", meta.ID, "endpoint", j.endpoint, "model", m.ID)

	queued := time.Now()
	release, err := s.acquire(ctx, m)
	s.metrics.QueueWait.Observe(time.Since(queued).Seconds())
	if err != nil {
		switch {
		case errors.Is(err, errQueueFull):
			writeError(w, newError(http.StatusTooManyRequests, "", "queue_full", "the server is busy: %d requests are already waiting (--max-queue); retry later", s.maxQueue))
		case r.Context().Err() != nil:
			w.code = statusClientClosed
		default:
			writeError(w, newError(http.StatusServiceUnavailable, "", "timeout", "request timed out after %s waiting for the model (--timeout)", s.timeout))
		}
		log.Info("not served", "status", w.code, "reason", err)
		return
	}
	defer release()

	var sse *sseWriter
	if j.stream {
		sse = newSSEWriter(w)
		sse.timeout = s.writeTO
		if ev := j.format.open(meta, j.includeUsage); ev != nil {
			if err := sse.event(ev); err != nil {
				w.code = statusClientClosed
				return
			}
		}
	}
	var text strings.Builder
	send := func(piece string) error {
		if piece == "" {
			return nil
		}
		if sse == nil {
			text.WriteString(piece)
			return nil
		}
		return sse.event(j.format.delta(meta, piece, j.includeUsage))
	}

	// The generator runs on a goroutine of its own and hands tokens over a bounded buffer; only
	// this goroutine writes to the client. A client that stops reading blocks only its own
	// writes: after the write timeout the stream is dropped, the generation cancelled (gen ends),
	// and a batching generator frees the row; until then the buffer fills and the row waits.
	tokens := make(chan engines.Token, streamBuffer)
	gen, cancelGen := context.WithCancel(ctx)
	defer cancelGen()
	var stats engines.Stats
	var genErr error
	m.running.Add(1)
	m.positions.Add(int64(len(j.prompt)))
	go func() {
		defer close(tokens)
		stats, genErr = m.Generator.Generate(gen, engines.Request{
			Tokens: j.prompt, MaxTokens: j.MaxTokens, Temperature: j.Temperature, TopP: j.TopP, Seed: j.Seed,
		}, func(t engines.Token) error {
			select {
			case tokens <- t:
				return nil
			case <-gen.Done():
				return gen.Err()
			}
		})
	}()
	dec := m.Tokenizer.NewDecoder()
	stop := NewStopScanner(j.Stop)
	var generated int
	var stopped bool
	var writeErr error
	last := time.Now()
	for t := range tokens {
		if stopped || writeErr != nil {
			continue // drain until the cancelled generation returns
		}
		now := time.Now()
		generated++
		m.positions.Add(1)
		if generated == 1 {
			s.metrics.TTFT.WithLabelValues(m.ID).Observe(now.Sub(j.start).Seconds())
		} else {
			s.metrics.InterToken.WithLabelValues(m.ID).Observe(now.Sub(last).Seconds())
		}
		last = now
		if m.eos[t.ID] {
			continue
		}
		var out string
		out, stopped = stop.Push(dec.Add(t.ID))
		if writeErr = send(out); writeErr != nil || stopped {
			cancelGen()
		}
	}
	m.running.Add(-1)
	m.positions.Add(-int64(len(j.prompt) + generated))
	s.metrics.ObserveStats(m.ID, stats)
	s.metrics.PromptTokens.WithLabelValues(m.ID).Add(float64(len(j.prompt)))
	s.metrics.GeneratedTokens.WithLabelValues(m.ID).Add(float64(generated))
	finish := stats.FinishReason
	err = genErr
	switch {
	case writeErr != nil:
		err = fmt.Errorf("write to client: %w", writeErr)
	case stopped:
		finish, err = "stop", nil
	case err == nil:
		out, hit := stop.Push(dec.Flush())
		if hit {
			finish = "stop"
		} else {
			out += stop.Flush()
		}
		err = send(out)
	}
	if finish == "" {
		finish = "length"
	}
	usage := NewUsage(len(j.prompt), generated)
	if sse != nil {
		// The closing events (or the error event after a timeout) get a short deadline of their own.
		sse.timeout = min(sse.timeout, 5*time.Second)
	}
	if err != nil {
		var e *Error
		switch {
		case r.Context().Err() != nil:
			w.code = statusClientClosed
		case writeErr != nil:
			// The client stopped reading (or the connection broke): nothing more can reach it.
			w.code = statusClientClosed
			log.Warn("client dropped: it stopped reading", "tokens", generated, "write_timeout", s.writeTO, "err", writeErr)
			return
		case ctx.Err() != nil:
			e = newError(http.StatusServiceUnavailable, "", "timeout", "request timed out after %s, %d tokens generated (--timeout)", s.timeout, generated)
		default:
			e = newError(http.StatusInternalServerError, "", "generation_failed", "generation failed: %v", err)
		}
		log.Warn("generation failed", "status", w.code, "tokens", generated, "err", err)
		if e != nil {
			if sse != nil {
				sse.event(ErrorBody{Error: e}) // the status line is already sent
			} else {
				writeError(w, e)
			}
		}
		return
	}
	if sse != nil {
		err = sse.event(j.format.finish(meta, finish, j.includeUsage))
		if err == nil && j.includeUsage {
			err = sse.event(j.format.usage(meta, usage))
		}
		if err == nil {
			err = sse.done()
		}
		if err != nil {
			w.code = statusClientClosed
		}
	} else {
		writeJSON(w, http.StatusOK, j.format.complete(meta, text.String(), finish, usage))
	}
	log.Info("served", "prompt_tokens", usage.PromptTokens, "completion_tokens", usage.CompletionTokens,
		"finish", finish, "ttft", stats.TTFT, "duration", time.Since(j.start))
}

func randomID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
