package engines

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// Batching: how Batcher serves many generations at once.
//
// A scheduler goroutine owns every running sequence and, between decode steps, admits waiting
// requests (up to the batch bound), prefills at most PrefillBudget prompt tokens of admitted
// sequences (chunks of equal length in one batched pass, each sequence into KV caches of its
// own), then decodes every ready sequence in one forward pass.
//
// The decode step works on a left-padded batch cache (model.Padded, as mlx-lm's BatchKVCache):
// per layer one [B, kvHeads, capacity, headDim] tensor in which every row writes its next
// position into the same slot, the rows' histories right-aligned before it and the slots left of
// a row's history masked out. So a step costs the same small number of kernels per layer
// whatever B is: the projections, the MLP and the head see [B, 1, hidden] at once (each weight
// matrix read once per step for all rows, the whole gain on bandwidth-bound decoding), RoPE takes
// per-row offsets, and one masked attention covers every row. The batch is rebuilt only when its
// membership changes (a prefilled sequence joins, a finished or cancelled one leaves): the
// survivors' rows are gathered, the newcomers' caches padded in, and padding that no row needs
// any more is cut. Per-row caches with per-row attention were tried first and are exact, but
// their per-row kernels made a 16-row step cost about as much as 16 single steps on the CPU.
//
// Sampling is per row with the row's own sampler (temperature, top-p, seeded key), so a seeded
// request draws the same tokens whatever shares its batch. Stop sequences and cancellation are the
// caller's: its emit returns an error or its context ends, and the row retires before the next
// step. Tokens reach the caller through a buffer that holds the whole request (MaxTokens), so the
// scheduler never waits for a reader: a slow reader holds back nobody, and the engine never
// writes to a socket (the server bounds what it buffers per client and drops one that stops
// reading).
//
// Exactness: a row's tokens equal Engine.Generate's on the same request when the batched kernels
// compute each row as the single-row ones do. The matrix products do (OpenBLAS sgemm walks the
// inner dimension in the same order for every row). The padded attention reduces over the key
// slots of the padded row: the masked slots add exact zeros, but where a row's keys sit relative
// to the vector lanes differs from the solo run, so a sum may round differently in its last bit.
// TestBatchedMatchesSolo checks tokens for equality, greedy and seeded, on several models; see
// its comment for what it found.

// Batching defaults.
const (
	// DefaultMaxBatch bounds the sequences decoded together.
	DefaultMaxBatch = 16
	// DefaultPrefillBudget is how many prompt tokens one scheduler step prefills, so that a long
	// prompt delays running streams by at most one such chunk per step.
	DefaultPrefillBudget = 512
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
	eos      map[int]bool

	in    chan *seq
	kick  chan struct{}
	quit  chan struct{}
	done  chan struct{}
	close sync.Once

	// Owned by the scheduler goroutine.
	waiting, running []*seq
	batch            padded

	// Published after every step for Load.
	nRunning, nWaiting, nBatch, kvBytes atomic.Int64
}

// BatchLoad is a snapshot of a Batcher's occupancy, for metrics.
type BatchLoad struct {
	// Running are the admitted sequences (prefilling or decoding); Waiting are queued behind
	// MaxBatch; Batch is how many rows the last decode step ran.
	Running, Waiting, Batch int
	// KVBytes is the memory the decode batch's KV cache holds (capacity, padding included).
	KVBytes int64
}

// Load reports the scheduler's occupancy after its last step. It may be called from any
// goroutine.
func (b *Batcher) Load() BatchLoad {
	return BatchLoad{Running: int(b.nRunning.Load()), Waiting: int(b.nWaiting.Load()), Batch: int(b.nBatch.Load()), KVBytes: b.kvBytes.Load()}
}

// publish updates what Load reports.
func (b *Batcher) publish() {
	b.nRunning.Store(int64(len(b.running)))
	b.nWaiting.Store(int64(len(b.waiting)))
	b.nBatch.Store(int64(len(b.batch.rows)))
	var kv int64
	for _, l := range b.batch.layers {
		kv += int64(l.Keys.NBytes() + l.Values.NBytes())
	}
	b.kvBytes.Store(kv)
}

// padded is the decode batch: its rows in order, their padding and the layers' padded caches.
// Rows' histories end at slot n; row r's starts at pad[r].
type padded struct {
	rows   []*seq
	pad    []int
	n, cap int
	layers []model.Padded
}

func (p *padded) free() {
	for _, l := range p.layers {
		l.Keys.Free()
		l.Values.Free()
	}
	*p = padded{}
}

// NewBatcher starts a scheduler on e. It bounds the batch by o.MaxBatch and by the KV cache of
// o.Context tokens per sequence that fits next to the weights in the memory the guard allows.
func NewBatcher(e *Engine, o BatchOptions) (*Batcher, error) {
	if o.MaxBatch < 0 || o.Context < 0 || o.PrefillBudget < 0 {
		return nil, fmt.Errorf("engines: batch options %+v: values must not be negative", o)
	}
	b := &Batcher{
		e: e, maxBatch: o.MaxBatch, context: o.Context, budget: o.PrefillBudget,
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
	fed  int
	next int // the token the next decode step feeds
	// shared, when set, holds the row's prefilled caches as row sharedRow (instead of caches).
	shared    *sharedCaches
	sharedRow int
	start     time.Time
	// out carries the tokens to Generate's goroutine; it holds MaxTokens, so sends never block.
	out chan Token
	// Set by the scheduler before it closes out.
	stats Stats
	err   error
}

// freeCaches frees the row's own caches and gives back its share of prefilled ones.
func (s *seq) freeCaches() {
	for _, c := range s.caches {
		c.Free()
	}
	s.caches = nil
	if s.shared != nil {
		s.shared.release()
		s.shared = nil
	}
}

func (s *seq) ready() bool { return s.fed == len(s.req.Tokens)-1 }

// Generate runs r as one row of the batch and calls emit for each token on the calling goroutine
// (never on the MLX thread), so emit may block, for instance on a slow client, without holding
// back any other row. An error from emit, or the end of ctx, retires the row before the next step
// and frees its caches.
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
	s := &seq{ctx: sctx, cancel: cancel, req: r, eos: b.eos, start: time.Now(), out: make(chan Token, r.MaxTokens)}
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
		if emitErr != nil {
			continue
		}
		if err := emit(t); err != nil {
			emitErr = err
			cancel() // the scheduler retires the row at its next step
			b.wake()
		}
	}
	if emitErr != nil {
		return s.stats, emitErr
	}
	return s.stats, s.err
}

// wake tells the scheduler that something changed (a row was cancelled).
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
				// Waiting rows whose callers went away: notice their contexts.
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
				b.batch.free()
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
	if len(b.running) > 0 {
		return true
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
		b.batch.free()
		return nil
	})
}

// retire ends s: frees its caches and sampler and hands Generate its stats. Runs on the MLX thread.
func (b *Batcher) retire(s *seq, finish string, err error) {
	s.freeCaches()
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

// retireCanceled retires the sequences of seqs whose context has ended and returns the others,
// in order, in seqs' backing array.
func (b *Batcher) retireCanceled(seqs []*seq) []*seq {
	keep := seqs[:0]
	for _, s := range seqs {
		if err := s.ctx.Err(); err != nil {
			b.retire(s, "", fmt.Errorf("%w: %w", ErrCanceled, err))
			continue
		}
		keep = append(keep, s)
	}
	return keep
}

// iterate is one scheduler step on the MLX thread: retire cancelled rows, admit, prefill, decode.
func (b *Batcher) iterate() error {
	b.waiting = b.retireCanceled(b.waiting)
	b.running = b.retireCanceled(b.running)
	for len(b.waiting) > 0 && len(b.running) < b.maxBatch {
		s := b.waiting[0]
		b.waiting = b.waiting[1:]
		s.caches = model.NewCaches(b.e.model)
		s.smp = newSampler(s.req.Temperature, s.req.TopP, s.req.Seed)
		s.next = s.req.Tokens[len(s.req.Tokens)-1]
		b.running = append(b.running, s)
	}
	defer b.publish()
	if err := b.prefill(); err != nil {
		return err
	}
	return b.decode()
}

// prefill feeds up to budget prompt tokens of the admitted rows, oldest first, all but each
// prompt's last token, in chunks of at most budget (and PrefillChunk) tokens. Chunks of the same
// length run as one batched forward (a burst of equal prompts costs one pass over the weights).
func (b *Batcher) prefill() error {
	left := b.budget
	var groups [][]*seq
	byLen := map[int]int{}
	chunk := map[*seq]int{}
	for _, s := range b.running {
		if left == 0 {
			break
		}
		if s.ready() {
			continue
		}
		n := min(left, PrefillChunk, len(s.req.Tokens)-1-s.fed)
		left -= n
		chunk[s] = n
		g, ok := byLen[n]
		if !ok {
			g = len(groups)
			byLen[n] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], s)
	}
	_, padded := b.e.model.Model.(model.PaddedLayer)
	for _, g := range groups {
		n := chunk[g[0]]
		if padded && len(g) > 1 && whole(g, n) {
			// Fresh prompts of one length, prefilled whole: one batched pass with an ordinary
			// causal mask; their rows join the padded batch straight from the shared caches.
			if err := b.fillShared(g, n); err != nil {
				return err
			}
			for _, s := range g {
				s.fed += n
			}
			continue
		}
		if err := b.fill(g, n); err != nil {
			return err
		}
		for _, s := range g {
			s.fed += chunk[s]
		}
	}
	return nil
}

// whole says whether n tokens prefill each row of g from its first token to its last but one.
func whole(g []*seq, n int) bool {
	for _, s := range g {
		if s.fed != 0 || len(s.req.Tokens)-1 != n {
			return false
		}
	}
	return true
}

// sharedCaches are the KV caches of rows prefilled together, [G, ...] per layer, freed when the
// last of those rows has joined the decode batch or retired.
type sharedCaches struct {
	caches []model.Cache
	users  int
}

func (c *sharedCaches) release() {
	if c.users--; c.users == 0 {
		for _, x := range c.caches {
			x.Free()
		}
	}
}

// fillShared prefills rows g, n tokens each from position 0, through model.Layer on [G, n] with
// caches shared by the group (row r of them is g[r]'s).
func (b *Batcher) fillShared(g []*seq, n int) error {
	ids := make([]int32, 0, len(g)*n)
	for _, s := range g {
		for _, t := range s.req.Tokens[:n] {
			ids = append(ids, int32(t))
		}
	}
	m := b.e.model
	sh := &sharedCaches{caches: model.NewCaches(m), users: len(g)}
	sc := mlx.NewScope()
	h := m.Embed(mlx.FromInt32s(ids, len(g), n))
	for i, c := range sh.caches {
		h = m.Layer(i, h, c)
	}
	err := sc.Close()
	if err == nil {
		var state []mlx.Array
		for _, c := range sh.caches {
			state = append(state, c.State()...)
		}
		err = mlx.Eval(state...)
	}
	if err != nil {
		for _, c := range sh.caches {
			c.Free()
		}
		return err
	}
	for r, s := range g {
		for _, c := range s.caches {
			c.Free()
		}
		s.caches = nil
		s.shared, s.sharedRow = sh, r
	}
	return nil
}

// fill runs the next n prompt tokens of each row through its caches, without the head, and
// evaluates the caches, as Engine.forward does during prefill.
func (b *Batcher) fill(rows []*seq, n int) error {
	ids := make([]int32, 0, len(rows)*n)
	for _, s := range rows {
		for _, t := range s.req.Tokens[s.fed : s.fed+n] {
			ids = append(ids, int32(t))
		}
	}
	m := b.e.model
	sc := mlx.NewScope()
	h := m.Embed(mlx.FromInt32s(ids, len(rows), n))
	caches := make([]model.Cache, len(rows))
	for i := range m.Config().NumLayers {
		for r, s := range rows {
			caches[r] = s.caches[i]
		}
		h = model.LayerRows(m, i, h, caches)
	}
	if err := sc.Close(); err != nil {
		return err
	}
	var state []mlx.Array
	for _, s := range rows {
		for _, c := range s.caches {
			state = append(state, c.State()...)
		}
	}
	return mlx.Eval(state...)
}

// decode runs one batched step for every ready row, samples each row's token with its own
// sampler, hands the tokens out and retires finished rows.
func (b *Batcher) decode() error {
	var rows []*seq
	for _, s := range b.running {
		if s.ready() {
			rows = append(rows, s)
		}
	}
	if len(rows) == 0 {
		b.batch.free()
		return nil
	}
	m := b.e.model
	t0 := time.Now()
	var logits mlx.Array
	var err error
	if pl, ok := m.Model.(model.PaddedLayer); ok {
		logits, err = b.forwardPadded(pl, rows)
	} else {
		logits, err = b.forwardRows(rows)
	}
	if err != nil {
		return err
	}
	rows = b.batch.rows
	if len(rows) == 0 { // forwardRows keeps the order of rows
		rows = b.readyRows()
	}
	forward := time.Since(t0)
	t1 := time.Now()
	sc := mlx.NewScope()
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
		s.out <- Token{ID: id, Step: step} // out holds MaxTokens: never blocks
		s.next = id
		switch {
		case s.eos[id]:
			b.finish(s, "stop")
		case len(s.stats.Tokens) >= s.req.MaxTokens:
			b.finish(s, "length")
		}
	}
	return nil
}

func (b *Batcher) readyRows() []*seq {
	var rows []*seq
	for _, s := range b.running {
		if s.ready() {
			rows = append(rows, s)
		}
	}
	return rows
}

// forwardRows is the decode forward for models without PaddedLayer: projections batched,
// attention row by row against each row's own caches. It returns evaluated logits [B, vocab].
func (b *Batcher) forwardRows(rows []*seq) (mlx.Array, error) {
	b.batch.free()
	m := b.e.model
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
		return mlx.Array{}, err
	}
	if err := mlx.Eval(logits); err != nil {
		logits.Free()
		return mlx.Array{}, err
	}
	return logits, nil
}

// forwardPadded is the decode forward over the padded batch, rebuilt first when its membership
// differs from rows. It returns evaluated logits [B, vocab] in b.batch.rows order.
func (b *Batcher) forwardPadded(pl model.PaddedLayer, rows []*seq) (mlx.Array, error) {
	if !sameRows(b.batch.rows, rows) {
		if err := b.rebuild(rows); err != nil {
			return mlx.Array{}, err
		}
	}
	p := &b.batch
	if p.n+1 > p.cap {
		if err := p.grow(); err != nil {
			return mlx.Array{}, err
		}
	}
	m := b.e.model
	ids := make([]int32, len(p.rows))
	offs := make([]int32, len(p.rows))
	pads := make([]int32, len(p.rows))
	for r, s := range p.rows {
		ids[r] = int32(s.next)
		offs[r] = int32(p.n - p.pad[r])
		pads[r] = int32(p.pad[r])
	}
	sc := mlx.NewScope()
	st := model.PaddedStep{
		N:       p.n,
		Offsets: mlx.FromInt32s(offs, len(offs)),
		Mask: mlx.GreaterEqual(mlx.Reshape(mlx.Arange(0, float64(p.n+1), 1, mlx.Int32), 1, 1, 1, p.n+1),
			mlx.FromInt32s(pads, len(pads), 1, 1, 1)),
	}
	h := m.Embed(mlx.FromInt32s(ids, len(ids), 1))
	for i := range m.Config().NumLayers {
		h = pl.LayerPadded(i, h, &p.layers[i], st)
	}
	logits := mlx.Reshape(m.Head(h), len(ids), -1)
	sc.Keep(logits)
	if err := sc.Close(); err != nil {
		logits.Free()
		return mlx.Array{}, err
	}
	state := []mlx.Array{logits}
	for _, l := range p.layers {
		state = append(state, l.Keys, l.Values)
	}
	if err := mlx.Eval(state...); err != nil {
		logits.Free()
		return mlx.Array{}, err
	}
	p.n++
	return logits, nil
}

func sameRows(a, b []*seq) bool {
	if len(a) != len(b) {
		return false
	}
	in := make(map[*seq]bool, len(a))
	for _, s := range a {
		in[s] = true
	}
	for _, s := range b {
		if !in[s] {
			return false
		}
	}
	return true
}

// rebuild makes the padded batch hold exactly rows: the rows already in it keep their history
// (gathered, shifted so that the longest history ends at the new write slot), the others join
// with the caches their prefill filled, which are then freed.
func (b *Batcher) rebuild(rows []*seq) error {
	old := b.batch
	oldIdx := map[*seq]int{}
	for r, s := range old.rows {
		oldIdx[s] = r
	}
	var keep []int32 // old row indices of the survivors, in the new order
	var join []*seq
	length := map[*seq]int{}
	var nr []*seq
	for _, s := range rows {
		if r, ok := oldIdx[s]; ok {
			keep = append(keep, int32(r))
			length[s] = old.n - old.pad[r]
			nr = append(nr, s)
		}
	}
	for _, s := range rows {
		if _, ok := oldIdx[s]; !ok {
			join = append(join, s)
			length[s] = s.fed
			nr = append(nr, s)
		}
	}
	n := 0
	for _, s := range nr {
		n = max(n, length[s])
	}
	capacity := (n + 1 + cacheStep - 1) / cacheStep * cacheStep
	nb := padded{rows: nr, n: n, cap: capacity}
	for _, s := range nr {
		nb.pad = append(nb.pad, n-length[s])
	}
	sc := mlx.NewScope()
	layers := b.e.model.Config().NumLayers
	for i := range layers {
		var parts [2][]mlx.Array
		for kv := range 2 {
			if len(keep) > 0 {
				src := old.layers[i].Keys
				if kv == 1 {
					src = old.layers[i].Values
				}
				sh := src.Shape()
				g := mlx.Take(src, mlx.FromInt32s(keep, len(keep)), 0)
				// The survivors' longest history is cut to n slots ending at n.
				from := max(0, old.n-n)
				g = mlx.Slice(g, []int{0, 0, from, 0}, []int{len(keep), sh[1], old.n, sh[3]})
				parts[kv] = append(parts[kv], padSlots(g, n-(old.n-from), capacity-n))
			}
			for _, s := range join {
				hist := length[s]
				var g mlx.Array
				if hist > 0 {
					row, c := 0, s.caches
					if s.shared != nil {
						row, c = s.sharedRow, s.shared.caches
					}
					src := c[i].State()[kv]
					sh := src.Shape()
					g = mlx.Slice(src, []int{row, 0, 0, 0}, []int{row + 1, sh[1], hist, sh[3]})
				}
				parts[kv] = append(parts[kv], padOrEmpty(g, b.e, n-hist, capacity-n))
			}
		}
		k, v := parts[0][0], parts[1][0]
		if len(parts[0]) > 1 {
			k, v = mlx.Concat(0, parts[0]...), mlx.Concat(0, parts[1]...)
		}
		sc.Keep(k, v)
		nb.layers = append(nb.layers, model.Padded{Keys: k, Values: v})
	}
	if err := sc.Close(); err != nil {
		nb.free()
		return err
	}
	var state []mlx.Array
	for _, l := range nb.layers {
		mlx.Detach(l.Keys, l.Values)
		state = append(state, l.Keys, l.Values)
	}
	if err := mlx.Eval(state...); err != nil {
		nb.free()
		return err
	}
	old.free()
	for _, s := range join {
		s.freeCaches()
	}
	b.batch = nb
	return nil
}

// padSlots adds zero slots before and after a [B, heads, L, dim] cache along the slot axis.
func padSlots(a mlx.Array, before, after int) mlx.Array {
	sh := a.Shape()
	var parts []mlx.Array
	if before > 0 {
		parts = append(parts, mlx.Full(0, a.DType(), sh[0], sh[1], before, sh[3]))
	}
	parts = append(parts, a)
	if after > 0 {
		parts = append(parts, mlx.Full(0, a.DType(), sh[0], sh[1], after, sh[3]))
	}
	if len(parts) == 1 {
		return a
	}
	return mlx.Concat(2, parts...)
}

// padOrEmpty is padSlots for a joining row, whose history g may be empty (invalid): then the row
// is all padding.
func padOrEmpty(g mlx.Array, e *Engine, before, after int) mlx.Array {
	if g.Valid() {
		return padSlots(g, before, after)
	}
	c := e.Config()
	return mlx.Full(0, e.model.Compute, 1, c.NumKVHeads, before+after, c.KVHeadDim())
}

// grow adds cacheStep slots to every layer of the batch.
func (p *padded) grow() error {
	sc := mlx.NewScope()
	next := make([]model.Padded, len(p.layers))
	for i, l := range p.layers {
		next[i] = model.Padded{Keys: padSlots(l.Keys, 0, cacheStep), Values: padSlots(l.Values, 0, cacheStep)}
		sc.Keep(next[i].Keys, next[i].Values)
	}
	if err := sc.Close(); err != nil {
		return err
	}
	for i, l := range p.layers {
		mlx.Detach(next[i].Keys, next[i].Values)
		l.Keys.Free()
		l.Values.Free()
	}
	p.layers = next
	p.cap += cacheStep
	return nil
}

// cacheStep is the slot granularity of the padded batch (as model.KVCache's).
const cacheStep = 256

// finish retires a row that ended normally and drops it from the running set (the padded batch
// drops it at its next rebuild).
func (b *Batcher) finish(s *seq, reason string) {
	b.retire(s, reason, nil)
	for i, x := range b.running {
		if x == s {
			b.running = append(b.running[:i], b.running[i+1:]...)
			break
		}
	}
}
