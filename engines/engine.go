// Package engines runs language models on MLX. Engine is the standalone engine: one process,
// the whole model, autoregressive decoding with a KV cache, every step timed after evaluation.
// Batcher runs many generations on an Engine at once by continuous batching (see batch.go for
// its design).
package engines

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
	"github.com/hippo-bench/hippo/engines/tokenizer"
)

// Options configures Open. The zero value of each optional field picks a default.
type Options struct {
	// Model is a checkpoint directory.
	Model string
	// DType is the compute dtype (f32, bf16, f16); empty means DefaultDType().
	DType string
	// Context is the longest prompt + generation the memory guard plans for (default 4096).
	Context int
	// RAM overrides the detected memory in bytes (for planning and tests); 0 detects it.
	RAM int64
}

// Engine holds a loaded model, its tokenizer and its KV caches. Its methods may be called from any
// goroutine but run one at a time on the engine's MLX thread.
type Engine struct {
	worker *mlx.Worker
	model  *model.Loaded
	tok    *tokenizer.Tokenizer
	caches []model.Cache
	dtype  mlx.DType
	// fed is what the caches hold, for speculative decoding's trims.
	fed fed
	// taps records tapped hidden states while GenerateSpec runs with a FeatureDrafter; nil
	// otherwise.
	taps *taps
}

// Open loads the checkpoint in o.Model after checking that it fits in memory.
func Open(ctx context.Context, o Options) (*Engine, error) {
	if o.DType == "" {
		o.DType = DefaultDType()
	}
	dt, err := mlx.ParseDType(o.DType)
	if err != nil {
		return nil, err
	}
	cfg, err := model.ReadConfig(o.Model)
	if err != nil {
		return nil, err
	}
	if o.Context == 0 {
		o.Context = 4096
	}
	if err := CheckMemory(cfg, dt, o.Context, o.RAM); err != nil {
		return nil, err
	}
	tok, err := tokenizer.Load(o.Model)
	if err != nil {
		return nil, err
	}
	e := &Engine{worker: mlx.NewWorker(), tok: tok, dtype: dt}
	err = e.worker.Do(ctx, func() error {
		m, err := model.Load(o.Model, dt)
		if err != nil {
			return err
		}
		e.model = m
		e.caches = model.NewCaches(m)
		return nil
	})
	if err != nil {
		e.worker.Close()
		return nil, err
	}
	return e, nil
}

// Tokenizer is the model's tokenizer.
func (e *Engine) Tokenizer() *tokenizer.Tokenizer { return e.tok }

// Config is the model's config.
func (e *Engine) Config() *model.Config { return e.model.Config() }

// DType is the compute dtype.
func (e *Engine) DType() mlx.DType { return e.dtype }

// WeightBytes is the memory the weights take in the compute dtype.
func (e *Engine) WeightBytes() int64 { return e.model.WeightBytes() }

// Close frees the model and stops the MLX thread.
func (e *Engine) Close() {
	e.worker.Do(context.Background(), func() error {
		for _, c := range e.caches {
			c.Free()
		}
		e.setTaps(nil)
		e.model.Close()
		return nil
	})
	e.worker.Close()
}

// Request is one generation.
type Request struct {
	// Tokens is the prompt, already tokenized (see Engine.Prompt).
	Tokens      []int
	MaxTokens   int
	Temperature float64
	TopP        float64
	Seed        uint64
	// IgnoreEOS keeps generating past end-of-sequence tokens, up to MaxTokens.
	IgnoreEOS bool
}

// Step is the timing of one generated token.
//
// The standalone engine decodes pipelined, as mlx-lm does: it builds and enqueues step t+1 on the
// device before it reads step t's token, so the host's graph building overlaps the device's work.
// There, Forward is the host time spent building and enqueueing the step's forward and sampling
// graph (asynchronous evaluation included), and Sample is the time the host then waited for the
// token id to arrive (the device finishing the step, and the read). Their sum is the step's share
// of the wall clock; neither alone is the device's compute time. In the other engines (pipeline
// stages, speculative verification) steps run in lockstep and Forward is measured after
// evaluation.
type Step struct {
	// Forward is the model's compute time, summed over stages in a pipeline; in the standalone
	// engine, the time to build and enqueue the step (see Step).
	Forward, Sample time.Duration
	// Syncs is how often the host waited for MLX during the step: blocking evaluations and reads
	// of array data (mlx.SyncCount). Standalone decoding reads one token id per step.
	Syncs mlx.Syncs
	// Pipeline only: each stage's own forward time, the time on the wire (the driver's round
	// trip minus the remote stages' forward time), and payload bytes sent and received.
	StageForward []time.Duration
	Network      time.Duration
	Bytes        int64
	// Hops splits Network by hop (Hops[k] is stage k to k+1 and back), where the transport
	// reports it (the project's TCP framing; not mlx-ring).
	Hops []time.Duration
}

// Token is one generated token and how long it took.
type Token struct {
	ID   int
	Step Step
}

// Stats summarises a generation.
type Stats struct {
	PromptTokens int
	// Prefill is the time from the request start to the first token's logits being evaluated;
	// TTFT adds sampling the first token. In the standalone engine the first token is sampled on
	// the device in the same evaluation, so both are the time until its id reached the host.
	Prefill, TTFT time.Duration
	// Steps has one entry per token after the first; Decode is the wall time from the first token
	// to the last, everything included.
	Steps        []Step
	Decode       time.Duration
	Tokens       []int
	FinishReason string // "stop" or "length"
	PeakMemory   int64
	// Spec holds the acceptance statistics of a speculative generation (nil otherwise).
	Spec *SpecStats
}

// ErrCanceled is returned (wrapped) when the context ends mid-generation; Stats still holds what
// was generated.
var ErrCanceled = errors.New("generation canceled")

// Prompt turns text into prompt tokens: with chat set, as one user message through the model's
// chat template (with the generation prompt); otherwise encoded as the Hugging Face tokenizer does
// by default (including its BOS, if it adds one).
func (e *Engine) Prompt(text string, chat bool) ([]int, error) { return Prompt(e.tok, text, chat) }

// Prompt is Engine.Prompt for any tokenizer.
func Prompt(tok *tokenizer.Tokenizer, text string, chat bool) ([]int, error) {
	if !chat {
		return tok.Encode(text, true), nil
	}
	s, err := tok.ApplyChatTemplate([]tokenizer.Message{{Role: "user", Content: text}}, true)
	if err != nil {
		return nil, err
	}
	// The template already wrote any BOS it wants.
	return tok.Encode(s, false), nil
}

// CheckRequest validates r's sampling settings.
func CheckRequest(r Request) error {
	if len(r.Tokens) == 0 {
		return errors.New("engines: empty prompt: give at least one token")
	}
	if r.MaxTokens <= 0 {
		return fmt.Errorf("engines: max tokens %d: must be at least 1", r.MaxTokens)
	}
	if r.Temperature < 0 || math.IsNaN(r.Temperature) {
		return fmt.Errorf("engines: temperature %v: must be >= 0", r.Temperature)
	}
	if r.TopP < 0 || r.TopP > 1 {
		return fmt.Errorf("engines: top_p %v: must be in [0, 1]", r.TopP)
	}
	return nil
}

// PrefillChunk matches mlx-lm's prefill_step_size, so both engines evaluate the same graphs.
const PrefillChunk = 2048

// Generate runs r and calls emit for every generated token (on the MLX thread: emit must not call
// the engine). Returning an error from emit stops generation with that error.
func (e *Engine) Generate(ctx context.Context, r Request, emit func(Token) error) (Stats, error) {
	var st Stats
	if err := CheckRequest(r); err != nil {
		return st, err
	}
	eos := map[int]bool{}
	if !r.IgnoreEOS {
		for _, id := range e.tok.EOS() {
			eos[id] = true
		}
	}
	err := e.worker.Do(ctx, func() error {
		st.PromptTokens = len(r.Tokens)
		for _, c := range e.caches {
			c.Reset()
		}
		e.fed = e.fed[:0]
		mlx.ResetPeakMemory()
		smp := newSampler(r.Temperature, r.TopP, r.Seed)
		defer smp.free()
		start := time.Now()
		logits, err := e.prefillLazy(r.Tokens)
		if err != nil {
			return err
		}
		e.fed = append(e.fed, r.Tokens...)
		tok := smp.next(logits)
		logits.Free()
		defer func() { tok.Free() }()
		if err := mlx.AsyncEval(tok); err != nil {
			return err
		}
		// The loop holds one token in flight: tok, enqueued but not read. Each turn enqueues the
		// step that consumes it (when another token is wanted), then reads it: the read waits
		// for the device while the next step is already queued behind it.
		// forward and forwardSyncs belong to the step whose token tok is.
		var forward, build time.Duration
		var forwardSyncs, buildSyncs mlx.Syncs
		for {
			var next mlx.Array
			if len(st.Tokens)+1 < r.MaxTokens {
				t1, s1 := time.Now(), mlx.SyncCount()
				if next, err = e.decodeStep(tok, smp); err != nil {
					return err
				}
				build, buildSyncs = time.Since(t1), mlx.SyncCount().Sub(s1)
			}
			t0 := time.Now()
			s0 := mlx.SyncCount()
			id, err := tok.Item()
			syncs := mlx.SyncCount().Sub(s0)
			wait := time.Since(t0)
			tok.Free()
			tok = next
			if err != nil {
				return fmt.Errorf("engines: read token: %w", err)
			}
			var step Step
			if len(st.Tokens) == 0 {
				st.TTFT = time.Since(start)
				st.Prefill = st.TTFT
			} else {
				step = Step{Forward: forward, Sample: wait, Syncs: syncs.Add(forwardSyncs)}
				st.Steps = append(st.Steps, step)
			}
			forward, forwardSyncs = build, buildSyncs
			st.Tokens = append(st.Tokens, id)
			if next.Valid() {
				// The queued step consumed id: the caches hold it.
				e.fed = append(e.fed, id)
			}
			st.Decode = time.Since(start) - st.TTFT
			if err := emit(Token{ID: id, Step: step}); err != nil {
				return err
			}
			if eos[id] {
				st.FinishReason = "stop"
				return nil
			}
			if len(st.Tokens) >= r.MaxTokens {
				st.FinishReason = "length"
				return nil
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("%w: %w", ErrCanceled, err)
			}
		}
	})
	_, st.PeakMemory, _ = memory(e.worker)
	return st, err
}

// decodeStep enqueues one decode step on the device: the forward of tok (an unevaluated token
// id from the previous step) and the choice of the token after it. It returns that token,
// unevaluated and owned by the caller, without waiting for anything.
func (e *Engine) decodeStep(tok mlx.Array, smp *sampler) (mlx.Array, error) {
	s := mlx.NewScope()
	logits, err := e.logits(mlx.Reshape(tok, 1, 1), 1, nil)
	if err != nil {
		s.Close()
		return mlx.Array{}, err
	}
	next := smp.next(logits)
	logits.Free()
	if err := s.Close(); err != nil {
		next.Free()
		return mlx.Array{}, err
	}
	if err := mlx.AsyncEval(next); err != nil {
		next.Free()
		return mlx.Array{}, err
	}
	return next, nil
}

// logits runs ids [1, n] through the model and returns the unevaluated logits of the last
// position, [1, vocab], owned by the caller. tokens are the ids' values for the taps' record
// (nil only while taps are off).
func (e *Engine) logits(ids mlx.Array, n int, tokens []int) (mlx.Array, error) {
	s := mlx.NewScope()
	m := e.model
	start := e.caches[0].Offset()
	h, feat := e.layers(m.Embed(ids))
	defer e.record(start, tokens, feat)
	last := mlx.Slice(h, []int{0, n - 1, 0}, []int{1, n, h.Dim(2)})
	logits := mlx.Reshape(m.Head(last), 1, -1)
	s.Keep(logits)
	if err := s.Close(); err != nil {
		logits.Free()
		return mlx.Array{}, err
	}
	return logits, nil
}

// forward runs tokens through the model. With head set it returns the evaluated logits of the
// last position, [1, vocab], owned by the caller; otherwise it only fills the caches (evaluating
// their state, as mlx-lm does during prefill) and returns an invalid array.
func (e *Engine) forward(tokens []int, head bool) (mlx.Array, error) {
	ids, err := tokenIDs(tokens, e.model.Config().VocabSize)
	if err != nil {
		return mlx.Array{}, err
	}
	if head {
		s := mlx.NewScope()
		logits, err := e.logits(mlx.FromInt32s(ids, 1, len(ids)), len(ids), tokens)
		s.Close() // frees the ids; logits is not the scope's
		if err != nil {
			return mlx.Array{}, err
		}
		if err := mlx.Eval(logits); err != nil {
			logits.Free()
			return mlx.Array{}, err
		}
		return logits, nil
	}
	s := mlx.NewScope()
	start := e.caches[0].Offset()
	_, feat := e.layers(e.model.Embed(mlx.FromInt32s(ids, 1, len(ids))))
	defer e.record(start, tokens, feat)
	if err := s.Close(); err != nil {
		return mlx.Array{}, err
	}
	var state []mlx.Array
	for _, c := range e.caches {
		state = append(state, c.State()...)
	}
	return mlx.Array{}, mlx.Eval(state...)
}

// tokenIDs converts tokens for the model, refusing ids outside its vocabulary: MLX's CPU gather
// does not bounds-check, so a bad id would read outside the embedding table.
func tokenIDs(tokens []int, vocab int) ([]int32, error) {
	ids := make([]int32, len(tokens))
	for i, t := range tokens {
		if t < 0 || t >= vocab {
			return nil, fmt.Errorf("engines: token id %d is outside the model's vocabulary of %d (a draft model with another tokenizer?)", t, vocab)
		}
		ids[i] = int32(t)
	}
	return ids, nil
}

// prefill fills the caches with all prompt tokens but the last, in chunks of PrefillChunk, then
// runs the last token alone and returns its evaluated logits, as mlx-lm's generate_step does.
func (e *Engine) prefill(tokens []int) (mlx.Array, error) {
	logits, err := e.prefillLazy(tokens)
	if err != nil {
		return mlx.Array{}, err
	}
	if err := mlx.Eval(logits); err != nil {
		logits.Free()
		return mlx.Array{}, err
	}
	return logits, nil
}

// prefillLazy is prefill with the last token's logits left unevaluated (the chunks before it are
// evaluated, as mlx-lm evaluates the caches after each).
func (e *Engine) prefillLazy(tokens []int) (mlx.Array, error) {
	for done := 0; len(tokens)-done > 1; {
		n := min(PrefillChunk, len(tokens)-1-done)
		if _, err := e.forward(tokens[done:done+n], false); err != nil {
			return mlx.Array{}, err
		}
		done += n
	}
	last := tokens[len(tokens)-1:]
	ids, err := tokenIDs(last, e.model.Config().VocabSize)
	if err != nil {
		return mlx.Array{}, err
	}
	s := mlx.NewScope()
	defer s.Close() // frees the ids; the logits are not the scope's
	return e.logits(mlx.FromInt32s(ids, 1, 1), 1, last)
}

func memory(w *mlx.Worker) (active, peak, cache int64) {
	w.Do(context.Background(), func() error {
		active, peak, cache = mlx.Memory()
		return nil
	})
	return
}
