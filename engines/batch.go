package engines

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// Batching: how Batcher serves many generations at once.
//
// A scheduler goroutine owns every running sequence and, between decode steps, admits waiting
// requests (up to the batch bound), prefills at most PrefillBudget prompt tokens of admitted
// sequences, then decodes every sequence that is ready in one forward pass. Each sequence keeps
// its own KV caches (model.KVCache per layer), so admitting and retiring a row never moves
// another row's state, and a row's attention reads exactly the positions a solo generation would.
// The decode step concatenates the rows' hidden states into [B, 1, hidden] for the projections,
// the MLP and the head, so each weight matrix is read once per step for all B rows: on
// bandwidth-bound decoding that is the whole gain. RoPE and attention run per row at that row's
// position (model.RowLayer), which keeps the masks trivial and the result exact; a padded batched
// attention would save a few small kernels per layer at the price of masks and per-row offsets.
//
// Sampling is per row with the row's own sampler (temperature, top-p, seeded key), so a seeded
// request draws the same tokens whatever shares its batch. Stop sequences and cancellation are the
// caller's: its emit returns an error or its context ends, and the row retires before the next
// step. Rows whose reader lags (their token buffer is full) sit out decode steps until it drains,
// so a slow reader never holds the others back; the engine itself never writes to a socket.
//
// Exactness: a row's tokens equal Engine.Generate's on the same request as long as a batched
// matrix product computes each row as the single-row product does. MLX's CPU matmul calls BLAS
// sgemm for every shape, and OpenBLAS's sgemm walks the inner dimension in the same order for
// every row of A, so [B, K] x [K, N] row r equals [1, K] x [K, N] bit for bit; the invariant test
// (TestBatchedMatchesSolo) checks that token for token, and it is what would catch a BLAS that
// switches kernels with the row count.

// Batching defaults.
const (
	// DefaultMaxBatch bounds the sequences decoded together.
	DefaultMaxBatch = 16
	// DefaultPrefillBudget is how many prompt tokens one scheduler step prefills, so that a long
	// prompt delays running streams by at most one such chunk per step.
	DefaultPrefillBudget = 512
	// DefaultStreamBuffer is how many tokens a sequence may get ahead of its reader.
	DefaultStreamBuffer = 64
)

// BatchOptions configures NewBatcher. The zero value of each field picks a default.
type BatchOptions struct {
	// MaxBatch bounds the sequences running at once (default DefaultMaxBatch); the memory guard
	// may lower it (see Batcher.MaxBatch).
	MaxBatch int
	// Context is the longest prompt + generation of one sequence, what the guard reserves KV
	// cache for (default 4096).
	Context int
	// RAM overrides the detected memory in bytes; 0 detects it.
	RAM int64
	// PrefillBudget is the prompt tokens prefilled per step (default DefaultPrefillBudget).
	PrefillBudget int
	// StreamBuffer is the tokens one sequence may hold for its reader (default
	// DefaultStreamBuffer).
	StreamBuffer int
}

// Batcher runs many generations at once on one Engine with continuous batching. Generate may be
// called from many goroutines at once: up to MaxBatch calls run together, more wait in arrival
// order. The Batcher takes over the engine's MLX thread while it runs; Close it before closing
// the engine.
type Batcher struct {
	e        *Engine
	maxBatch int
	context  int
	budget   int
	buffer   int
	eos      map[int]bool

	in    chan *seq
	kick  chan struct{}
	quit  chan struct{}
	done  chan struct{}
	close sync.Once

	// Owned by the scheduler goroutine.
	waiting, running []*seq
	step             int
}

// NewBatcher starts a scheduler on e. It bounds the batch by o.MaxBatch and by the KV cache of
// o.Context tokens per sequence that fits next to the weights in the memory the guard allows.
func NewBatcher(e *Engine, o BatchOptions) (*Batcher, error) {
	if o.MaxBatch < 0 || o.Context < 0 || o.PrefillBudget < 0 || o.StreamBuffer < 0 {
		return nil, fmt.Errorf("engines: batch options %+v: values must not be negative", o)
	}
	b := &Batcher{
		e: e, maxBatch: o.MaxBatch, context: o.Context, budget: o.PrefillBudget, buffer: o.StreamBuffer,
		eos: map[int]bool{}, in: make(chan *seq), kick: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{}),
	}
	if b.maxBatch == 0 {
		b.maxBatch = DefaultMaxBatch
	}
	if b.context == 0 {
		b.context = 4096
	}
	if b.budget == 0 {
		b.budget = DefaultPrefillBudget
	}
	if b.buffer == 0 {
		b.buffer = DefaultStreamBuffer
	}
	fit, err := SequencesFit(e.Config(), e.DType(), b.context, o.RAM)
	if err != nil {
		return nil, err
	}
	b.maxBatch = min(b.maxBatch, fit)
	for _, id := range e.tok.EOS() {
		b.eos[id] = true
	}
	go b.schedule()
	return b, nil
}

// SequencesFit is how many sequences of context tokens fit in memory at once: the KV cache of
// each, beside the weights and the runtime overhead, within SafetyFactor of ram (detected when
// 0). It is at least 1 when the model fits at all (CheckMemory), and a large number when the
// memory cannot be detected.
func SequencesFit(c *model.Config, dt mlx.DType, context int, ram int64) (int, error) {
	if ram == 0 {
		var err error
		if ram, err = SystemRAM(); err != nil {
			return 1 << 20, nil
		}
	}
	e := EstimateMemory(c, dt, context)
	free := int64(float64(ram)*SafetyFactor) - e.Weights - e.Overhead
	if e.KVCache <= 0 {
		return 1 << 20, nil
	}
	n := free / e.KVCache
	if n < 1 {
		return 0, fmt.Errorf("%w: not even one sequence of %d tokens fits beside the weights: %s", ErrMemory, context, "use a shorter --context or a smaller model")
	}
	return int(min(n, 1<<20)), nil
}

// MaxBatch is how many generations run at once; more calls of Generate wait. A server uses it to
// know that it may overlap that many calls.
func (b *Batcher) MaxBatch() int { return b.maxBatch }

// Close cancels every generation still running or waiting and stops the scheduler. Generate must
// not be called afterwards.
func (b *Batcher) Close() {
	b.close.Do(func() { close(b.quit) })
	<-b.done
}

// ErrClosed is returned by Generate when the Batcher was closed.
var ErrClosed = errors.New("engines: batcher closed")

// seq is one generation inside the scheduler.
type seq struct {
	ctx    context.Context
	cancel context.CancelFunc
	req    Request
	eos    map[int]bool
	caches []model.Cache
	smp    *sampler
	// fed is how many prompt tokens the caches hold; the last prompt token is fed by the first
	// decode step, as Engine.Generate feeds it alone for the first logits.
	fed   int
	next  int // the token the next decode step feeds
	start time.Time
	// last is when the previous token was sampled, for Step timings.
	last time.Time
	// out carries the tokens to Generate's goroutine; the scheduler writes only when it has room.
	out chan Token
	// Set by the scheduler before it closes out.
	stats Stats
	err   error
}

func (s *seq) ready() bool { return s.fed == len(s.req.Tokens)-1 }

// Generate runs r as one row of the batch and calls emit for each token on the calling goroutine
// (never on the MLX thread), so emit may block, for instance on a slow client: meanwhile the row
// sits out decode steps once StreamBuffer tokens are waiting, and the other rows go on. An error
// from emit, or the end of ctx, retires the row before the next step and frees its caches.
// Stats.PeakMemory is not measured per row (rows share the process).
func (b *Batcher) Generate(ctx context.Context, r Request, emit func(Token) error) (Stats, error) {
	if err := CheckRequest(r); err != nil {
		return Stats{}, err
	}
	if n := len(r.Tokens) + r.MaxTokens; n > b.context {
		return Stats{}, fmt.Errorf("engines: prompt of %d tokens + %d to generate is longer than the batcher's context of %d: lower max tokens or raise the context", len(r.Tokens), r.MaxTokens, b.context)
	}
	if _, err := tokenIDs(r.Tokens, b.e.Config().VocabSize); err != nil {
		return Stats{}, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &seq{ctx: sctx, cancel: cancel, req: r, eos: b.eos, start: time.Now(), out: make(chan Token, b.buffer)}
	if r.IgnoreEOS {
		s.eos = nil
	}
	select {
	case b.in <- s:
	case <-ctx.Done():
		return Stats{PromptTokens: len(r.Tokens)}, fmt.Errorf("%w: %w", ErrCanceled, ctx.Err())
	case <-b.quit:
		return Stats{}, ErrClosed
	}
	var emitErr error
	for t := range s.out {
		b.wake()
		if emitErr != nil {
			continue
		}
		if err := emit(t); err != nil {
			emitErr = err
			cancel() // the scheduler retires the row at its next step
		}
	}
	if emitErr != nil {
		return s.stats, emitErr
	}
	return s.stats, s.err
}

// wake tells the scheduler that something changed (a reader drained its buffer).
func (b *Batcher) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// schedule is the scheduler loop. Each iteration is one job on the MLX thread.
func (b *Batcher) schedule() {
	defer close(b.done)
	for {
		busy := b.runnable()
		if busy {
			// Take whatever arrived without waiting.
			select {
			case s := <-b.in:
				b.waiting = append(b.waiting, s)
				continue
			case <-b.quit:
				b.shutdown()
				return
			default:
			}
		} else {
			select {
			case s := <-b.in:
				b.waiting = append(b.waiting, s)
				continue
			case <-b.kick:
				continue
			case <-time.After(50 * time.Millisecond):
				// Rows whose readers went away while paused: notice their contexts.
				continue
			case <-b.quit:
				b.shutdown()
				return
			}
		}
		err := b.e.worker.Do(context.Background(), b.iterate)
		if err != nil {
			// A failed step poisons every row that took part in it: retire them all with the error.
			b.e.worker.Do(context.Background(), func() error {
				for _, s := range b.running {
					b.retire(s, "", fmt.Errorf("engines: batched step: %w", err))
				}
				b.running = b.running[:0]
				return nil
			})
		}
	}
}

// runnable says whether a step would do anything: a row to admit, prefill, retire or decode.
func (b *Batcher) runnable() bool {
	if len(b.waiting) > 0 && len(b.running) < b.maxBatch {
		return true
	}
	for _, s := range b.running {
		if s.ctx.Err() != nil || !s.ready() || len(s.out) < cap(s.out) {
			return true
		}
	}
	for _, s := range b.waiting {
		if s.ctx.Err() != nil {
			return true
		}
	}
	return false
}

func (b *Batcher) shutdown() {
	b.e.worker.Do(context.Background(), func() error {
		for _, s := range append(b.running, b.waiting...) {
			b.retire(s, "", ErrClosed)
		}
		b.running, b.waiting = nil, nil
		return nil
	})
}

// retire ends s: frees its caches and sampler and hands Generate its stats. Runs on the MLX thread.
func (b *Batcher) retire(s *seq, finish string, err error) {
	for _, c := range s.caches {
		c.Free()
	}
	s.caches = nil
	if s.smp != nil {
		s.smp.free()
		s.smp = nil
	}
	s.stats.PromptTokens = len(s.req.Tokens)
	s.stats.FinishReason = finish
	if len(s.stats.Tokens) > 0 {
		s.stats.Decode = time.Since(s.start) - s.stats.TTFT
	}
	s.err = err
	close(s.out)
}

// iterate is one scheduler step on the MLX thread: retire cancelled rows, admit, prefill, decode.
func (b *Batcher) iterate() error {
	keep := b.waiting[:0]
	for _, s := range b.waiting {
		if err := s.ctx.Err(); err != nil {
			b.retire(s, "", fmt.Errorf("%w: %w", ErrCanceled, err))
			continue
		}
		keep = append(keep, s)
	}
	b.waiting = keep
	run := b.running[:0]
	for _, s := range b.running {
		if err := s.ctx.Err(); err != nil {
			b.retire(s, "", fmt.Errorf("%w: %w", ErrCanceled, err))
			continue
		}
		run = append(run, s)
	}
	b.running = run
	for len(b.waiting) > 0 && len(b.running) < b.maxBatch {
		s := b.waiting[0]
		b.waiting = b.waiting[1:]
		s.caches = model.NewCaches(b.e.model)
		s.smp = newSampler(s.req.Temperature, s.req.TopP, s.req.Seed)
		s.next = s.req.Tokens[len(s.req.Tokens)-1]
		b.running = append(b.running, s)
	}
	if err := b.prefill(); err != nil {
		return err
	}
	return b.decode()
}

// prefill feeds up to budget prompt tokens of the admitted rows, oldest first, in chunks of at
// most budget (and PrefillChunk) tokens, all but each prompt's last token.
func (b *Batcher) prefill() error {
	left := b.budget
	for _, s := range b.running {
		for left > 0 && !s.ready() {
			n := min(left, PrefillChunk, len(s.req.Tokens)-1-s.fed)
			if err := b.fill(s, s.req.Tokens[s.fed:s.fed+n]); err != nil {
				return err
			}
			s.fed += n
			left -= n
		}
		if left == 0 {
			break
		}
	}
	return nil
}

// fill runs tokens through s's caches without the head and evaluates the caches, as
// Engine.forward does during prefill.
func (b *Batcher) fill(s *seq, tokens []int) error {
	ids, err := tokenIDs(tokens, b.e.Config().VocabSize)
	if err != nil {
		return err
	}
	m := b.e.model
	sc := mlx.NewScope()
	h := m.Embed(mlx.FromInt32s(ids, 1, len(ids)))
	for i, c := range s.caches {
		h = m.Layer(i, h, c)
	}
	if err := sc.Close(); err != nil {
		return err
	}
	var state []mlx.Array
	for _, c := range s.caches {
		state = append(state, c.State()...)
	}
	return mlx.Eval(state...)
}

// decode runs one batched step for every ready row with room in its buffer, samples each row's
// token with its own sampler, hands the tokens out and retires finished rows.
func (b *Batcher) decode() error {
	var rows []*seq
	for _, s := range b.running {
		if s.ready() && len(s.out) < cap(s.out) {
			rows = append(rows, s)
		}
	}
	if len(rows) == 0 {
		return nil
	}
	m := b.e.model
	t0 := time.Now()
	ids := make([]int32, len(rows))
	for i, s := range rows {
		ids[i] = int32(s.next)
	}
	sc := mlx.NewScope()
	h := m.Embed(mlx.FromInt32s(ids, len(rows), 1))
	caches := make([]model.Cache, len(rows))
	for i := range m.Config().NumLayers {
		for r, s := range rows {
			caches[r] = s.caches[i]
		}
		h = model.LayerRows(m, i, h, caches)
	}
	logits := mlx.Reshape(m.Head(h), len(rows), -1)
	sc.Keep(logits)
	if err := sc.Close(); err != nil {
		logits.Free()
		return err
	}
	err := mlx.Eval(logits)
	forward := time.Since(t0)
	if err != nil {
		logits.Free()
		return err
	}
	t1 := time.Now()
	sc = mlx.NewScope()
	picks := make([]mlx.Array, len(rows))
	vocab := logits.Dim(1)
	for r, s := range rows {
		row := mlx.Slice(logits, []int{r, 0}, []int{r + 1, vocab})
		picks[r] = s.smp.next(row) // int32 [1], owned here
		defer picks[r].Free()
	}
	tokens := picks[0]
	if len(picks) > 1 {
		tokens = mlx.Concat(0, picks...)
	}
	got, err := tokens.Int32s()
	sc.Close()
	logits.Free()
	if err != nil {
		return fmt.Errorf("engines: sample: %w", err)
	}
	sample := time.Since(t1)
	now := time.Now()
	for r, s := range rows {
		id := int(got[r])
		var step Step
		if len(s.stats.Tokens) == 0 {
			s.stats.Prefill = t1.Sub(s.start)
			s.stats.TTFT = now.Sub(s.start)
		} else {
			step = Step{Forward: forward, Sample: sample}
			s.stats.Steps = append(s.stats.Steps, step)
		}
		s.stats.Tokens = append(s.stats.Tokens, id)
		s.out <- Token{ID: id, Step: step} // room was checked above
		s.next = id
		switch {
		case s.eos[id]:
			b.finish(s, "stop")
		case len(s.stats.Tokens) >= s.req.MaxTokens:
			b.finish(s, "length")
		}
	}
	b.step++
	return nil
}

// finish retires a row that ended normally and drops it from the running set.
func (b *Batcher) finish(s *seq, reason string) {
	b.retire(s, reason, nil)
	for i, x := range b.running {
		if x == s {
			b.running = append(b.running[:i], b.running[i+1:]...)
			break
		}
	}
}
