// Package engines runs language models on MLX. Engine is the standalone engine: one process,
// the whole model, autoregressive decoding with a KV cache, every step timed after evaluation.
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

// DefaultDType is the fastest compute dtype of this build's MLX backend: float32 on the CPU
// backend (BLAS runs float32 only; bf16 and f16 matmuls run scalar loops, 3-10x slower), the
// checkpoint's own dtype on Metal.
func DefaultDType() string { return defaultDType }

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

// Step is the timing of one generated token, measured after evaluation.
type Step struct {
	// Forward is the model's compute time, summed over stages in a pipeline.
	Forward, Sample time.Duration
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
	// TTFT adds sampling the first token.
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
		mlx.ResetPeakMemory()
		smp := newSampler(r.Temperature, r.TopP, r.Seed)
		defer smp.free()
		start := time.Now()
		logits, err := e.prefill(r.Tokens)
		if err != nil {
			return err
		}
		st.Prefill = time.Since(start)
		var forward time.Duration
		for {
			t0 := time.Now()
			id, err := smp.sample(logits)
			logits.Free()
			if err != nil {
				return err
			}
			var step Step
			if len(st.Tokens) == 0 {
				st.TTFT = time.Since(start)
			} else {
				step = Step{Forward: forward, Sample: time.Since(t0)}
				st.Steps = append(st.Steps, step)
			}
			st.Tokens = append(st.Tokens, id)
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
			t1 := time.Now()
			if logits, err = e.forward([]int{id}, true); err != nil {
				return err
			}
			forward = time.Since(t1)
		}
	})
	_, st.PeakMemory, _ = memory(e.worker)
	return st, err
}

// forward runs tokens through the model. With head set it returns the evaluated logits of the
// last position, [1, vocab], owned by the caller; otherwise it only fills the caches (evaluating
// their state, as mlx-lm does during prefill) and returns an invalid array.
func (e *Engine) forward(tokens []int, head bool) (mlx.Array, error) {
	ids, err := tokenIDs(tokens, e.model.Config().VocabSize)
	if err != nil {
		return mlx.Array{}, err
	}
	s := mlx.NewScope()
	m := e.model
	start := e.caches[0].Offset()
	h, feat := e.layers(m.Embed(mlx.FromInt32s(ids, 1, len(ids))))
	defer e.record(start, tokens, feat)
	var logits mlx.Array
	if head {
		last := mlx.Slice(h, []int{0, len(tokens) - 1, 0}, []int{1, len(tokens), h.Dim(2)})
		logits = mlx.Reshape(m.Head(last), 1, -1)
		s.Keep(logits)
	}
	if err := s.Close(); err != nil {
		logits.Free()
		return mlx.Array{}, err
	}
	if !head {
		var state []mlx.Array
		for _, c := range e.caches {
			state = append(state, c.State()...)
		}
		return mlx.Array{}, mlx.Eval(state...)
	}
	if err := mlx.Eval(logits); err != nil {
		logits.Free()
		return mlx.Array{}, err
	}
	return logits, nil
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
// runs the last token alone and returns its logits, as mlx-lm's generate_step does.
func (e *Engine) prefill(tokens []int) (mlx.Array, error) {
	for done := 0; len(tokens)-done > 1; {
		n := min(PrefillChunk, len(tokens)-1-done)
		if _, err := e.forward(tokens[done:done+n], false); err != nil {
			return mlx.Array{}, err
		}
		done += n
		if len(tokens)-done == 1 {
			break
		}
	}
	return e.forward(tokens[len(tokens)-1:], true)
}

func memory(w *mlx.Worker) (active, peak, cache int64) {
	w.Do(context.Background(), func() error {
		active, peak, cache = mlx.Memory()
		return nil
	})
	return
}
