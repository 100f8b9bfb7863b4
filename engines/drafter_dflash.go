package engines

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// DFlashDrafter drafts with a DFlash block draft model (z-lab's DFlash): one non-causal forward
// over [anchor, mask x (B-1)] proposes a whole block, conditioned on the hidden states the target
// recorded at every earlier position (see model.DFlash for the checkpoint and the forward). The
// draft shares the target's embedding and lm_head, so it runs on the target's MLX thread and only
// with that target's Engine.GenerateSpec (a FeatureDrafter); or, built with NewStageDFlashDrafter,
// beside a pipeline's first stage, whose driver records the features every stage returns. Calls
// must not overlap; Close it before closing the target or stage.
type DFlashDrafter struct {
	// target is the engine the drafter was built for; stage the pipeline stage (one is nil).
	target *Engine
	stage  *Stage
	worker *mlx.Worker
	embed  *model.Loaded // the target's embedding and config
	m      *model.DFlash
	head   model.Unembedder
	// ownHead is the lm_head the drafter loaded itself (a stage without a tied head), or nil.
	ownHead *model.Head
	// rows is the head restricted to the draft's head vocabulary (model.VocabMapFile in its
	// directory), or nil: the draft then scores the target's whole vocabulary.
	rows   *model.HeadRows
	caches []model.Cache
	// fed is the context the caches hold: the tokens at positions [0, len(fed)).
	fed []int
	// confidence holds the float64 bits of the draft confidence: above 0, a greedy draft ends
	// before the first position at which the drafter's own probability that every draft so far
	// is right (the product of each position's top probability) falls below it; see
	// SetConfidence. Atomic: a server's loader may set it while a request drafts.
	confidence atomic.Uint64
}

var (
	_ FeatureDrafter = (*DFlashDrafter)(nil)
	_ deviceDrafter  = (*DFlashDrafter)(nil)
)

// NewDFlashDrafter loads the DFlash draft checkpoint in dir for target, in the target's compute
// dtype, after checking that it was made for a target of this shape. When dir has a head
// vocabulary (model.VocabMapFile, read by model.ReadHeadVocab), the drafter copies those rows of
// the target's head once and scores only them: greedy drafts are the best token of the subset,
// and sampled drafts come with distributions over the whole vocabulary that are 0 outside it.
func NewDFlashDrafter(ctx context.Context, target *Engine, dir string) (*DFlashDrafter, error) {
	d := &DFlashDrafter{target: target, worker: target.worker, embed: target.model}
	err := target.worker.Do(ctx, func() error {
		head, ok := target.model.Model.(model.Unembedder)
		if !ok {
			return fmt.Errorf("dflash: target architecture %s does not share its lm_head with drafters: DFlash runs with qwen3 and llama targets", target.model.Config().ModelType)
		}
		m, err := model.LoadDFlash(dir, target.dtype, target.model.Config())
		if err != nil {
			return err
		}
		d.m, d.head = m, head
		if err := d.loadHeadVocab(dir); err != nil {
			m.Close()
			return err
		}
		d.caches = m.NewCaches()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dflash drafter: %w", err)
	}
	return d, nil
}

// NewStageDFlashDrafter loads the DFlash draft checkpoint in dir beside a pipeline's first stage
// st, in its dtype: it embeds with the stage's embedding and projects with the target's lm_head
// (the embedding when tied, else lm_head loaded from the target checkpoint on its own). Its
// features come from RecordTaps, which the pipeline driver fills with what every stage returns
// for the layers of TapLayers.
func NewStageDFlashDrafter(ctx context.Context, st *Stage, dir string) (*DFlashDrafter, error) {
	if !st.First() {
		return nil, fmt.Errorf("dflash drafter: stage %v does not embed tokens: it runs beside the first stage", st.Range())
	}
	d := &DFlashDrafter{stage: st, worker: st.worker, embed: st.model}
	err := st.worker.Do(ctx, func() error {
		cfg := st.model.Config()
		if cfg.Tied() {
			head, ok := st.model.Model.(model.Unembedder)
			if !ok {
				return fmt.Errorf("dflash: target architecture %s does not share its lm_head with drafters: DFlash runs with qwen3 and llama targets", cfg.ModelType)
			}
			d.head = head
		} else {
			if _, ok := st.model.Model.(model.Unembedder); !ok {
				return fmt.Errorf("dflash: target architecture %s does not share its lm_head with drafters: DFlash runs with qwen3 and llama targets", cfg.ModelType)
			}
			h, err := model.LoadHead(st.model.Dir, st.dtype)
			if err != nil {
				return err
			}
			d.head, d.ownHead = h, h
		}
		m, err := model.LoadDFlash(dir, st.dtype, cfg)
		if err == nil {
			d.m = m
			if err = d.loadHeadVocab(dir); err != nil {
				m.Close()
			}
		}
		if err != nil {
			if d.ownHead != nil {
				d.ownHead.Close()
			}
			return err
		}
		d.caches = m.NewCaches()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dflash drafter: %w", err)
	}
	return d, nil
}

// loadHeadVocab reads the head vocabulary of the draft in dir, if it has one, and cuts d.head
// down to its rows. Must run on the drafter's thread.
func (d *DFlashDrafter) loadHeadVocab(dir string) error {
	ids, err := model.ReadHeadVocab(dir, d.embed.Config().VocabSize)
	if err != nil || ids == nil {
		return err
	}
	rs, ok := d.head.(model.RowSelector)
	if !ok {
		return fmt.Errorf("dflash: %s: the target's head cannot be restricted to a subset of its rows: remove the file to draft over the whole vocabulary", filepath.Join(dir, model.VocabMapFile))
	}
	d.rows, err = rs.HeadRows(ids)
	return err
}

// HeadVocab is the number of tokens the draft's head scores: its head vocabulary's size, or the
// target's vocabulary when it has none.
func (d *DFlashDrafter) HeadVocab() int {
	if d.rows != nil {
		return d.rows.Subset().Len()
	}
	return d.embed.Config().VocabSize
}

// Stage is the pipeline stage the drafter runs beside (nil for one built on an Engine).
func (d *DFlashDrafter) Stage() *Stage { return d.stage }

// Layers lists the target layers the draft conditions on, in the order it concatenates them.
func (d *DFlashDrafter) Layers() []int { return append([]int(nil), d.m.TargetLayers()...) }

// IndependentDrafts reports that at a temperature each draft is drawn from its own position's
// distribution, which the other drafts' tokens do not change (the block is drafted in one forward
// from mask tokens), so a verifier may redraw any one of them from another distribution.
func (d *DFlashDrafter) IndependentDrafts() bool { return true }

// BlockSize is the draft's block: one forward proposes up to BlockSize-1 tokens.
func (d *DFlashDrafter) BlockSize() int { return d.m.Config().BlockSize }

// TapLayers implements FeatureDrafter.
func (d *DFlashDrafter) TapLayers(e *Engine) ([]int, error) {
	if d.target == nil || e != d.target {
		return nil, fmt.Errorf("dflash: the drafter was built for another target engine: build one with NewDFlashDrafter for this engine")
	}
	return append([]int(nil), d.m.TargetLayers()...), nil
}

// SetConfidence makes greedy drafts stop early: a draft keeps its first positions while the
// product of their top probabilities under the drafter stays at or above p, so that the verify
// spends no rows on drafts the drafter itself expects to lose (a verify costs more the more rows
// it has; see bench spec's verify v). It may keep no draft at all, and the step is then a plain
// decode step. 0 (the default) keeps every position; the target's choice of tokens is the same
// either way. Sampled drafts are not shortened: their proposal distributions are the rejection
// rule's, whatever their length.
func (d *DFlashDrafter) SetConfidence(p float64) error {
	if !ValidDraftConfidence(p) {
		return fmt.Errorf("dflash: draft confidence %g: use 0 (off) up to below 1, e.g. 0.2", p)
	}
	d.confidence.Store(math.Float64bits(p))
	return nil
}

// Reset implements Drafter.
func (d *DFlashDrafter) Reset(ctx context.Context) error {
	return d.worker.Do(ctx, func() error {
		d.reset()
		return nil
	})
}

func (d *DFlashDrafter) reset() {
	for _, c := range d.caches {
		c.Reset()
	}
	d.fed = d.fed[:0]
}

// Close frees the draft's weights and caches (on the target's or stage's thread: call it before
// their Close).
func (d *DFlashDrafter) Close() {
	d.worker.Do(context.Background(), func() error {
		for _, c := range d.caches {
			c.Free()
		}
		d.m.Close()
		if d.rows != nil {
			d.rows.Close()
		}
		if d.ownHead != nil {
			d.ownHead.Close()
		}
		return nil
	})
}

// Draft implements Drafter: one draft forward over the full trained block, whose first
// min(k, B-1) mask positions are the drafts (greedy argmax each; with a temperature each is drawn
// from its own distribution, returned for rejection sampling: the positions are drafted in
// parallel, so each distribution is exactly the proposal for its token). The block is never
// shortened to k: the draft was trained on blocks of B, and its attention over the block is
// non-causal, so a shorter block would change the drafts; only the lm_head, the costly part, is
// limited to the k positions used. z-lab's reference instead shrinks the block near max_tokens.
// Sampled drafts are drawn on the device, as draftOnDevice does, and their distributions then
// read back at once.
func (d *DFlashDrafter) Draft(ctx context.Context, history []int, k int, temperature float64, rng *rand.Rand) ([]int, [][]float32, error) {
	if temperature > 0 {
		out, q, err := d.draftOnDevice(ctx, history, k, temperature, rng)
		if err != nil || !q.Valid() { // invalid: nothing drafted
			return nil, nil, err
		}
		var dists [][]float32
		err = d.worker.Do(context.Background(), func() error { // q is freed even if ctx ends now
			defer q.Free()
			var err error
			dists, err = hostRows(q)
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("dflash: %w", err)
		}
		return out, dists, nil
	}
	n := min(k, d.BlockSize()-1)
	if n < 1 || len(history) < 2 { // no context: the prompt's hidden states come with the first token
		return nil, nil, nil
	}
	var out []int
	gate := math.Float64frombits(d.confidence.Load())
	err := d.worker.Do(ctx, func() error {
		s := mlx.NewScope()
		defer s.Close()
		var am, top mlx.Array
		_, err := d.logits(history, n, func(logits mlx.Array) []mlx.Array {
			am = mlx.AsType(mlx.Argmax(logits, -1, false), mlx.Int32)
			if sub := d.subset(); sub != nil {
				am = sub.ToVocab(am)
			}
			if gate == 0 {
				return []mlx.Array{am}
			}
			// Each position's top probability: exp(max logit - logsumexp), [n].
			lf := mlx.AsType(logits, mlx.Float32)
			top = mlx.Exp(mlx.Sub(mlx.Max(lf, false, -1), mlx.LogSumExp(lf, false, -1)))
			return []mlx.Array{am, top}
		})
		if err != nil {
			return err
		}
		if out, err = intsOf(am); err != nil || gate == 0 {
			return err
		}
		ps, err := top.Float32s()
		if err != nil {
			return err
		}
		out = out[:confidentPrefix(ps, gate)]
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("dflash: %w", err)
	}
	return out, nil, nil
}

// draftOnDevice implements deviceDrafter: Draft at a temperature above 0 whose distributions stay
// on the device. The block's min(k, B-1) drafts are drawn at once from softmax(logits /
// temperature) of their positions, with a device key seeded from rng, and evaluated with the
// draft's caches: a draft step costs one evaluation and one read of the drafted ids.
func (d *DFlashDrafter) draftOnDevice(ctx context.Context, history []int, k int, temperature float64, rng *rand.Rand) ([]int, mlx.Array, error) {
	n := min(k, d.BlockSize()-1)
	if n < 1 || len(history) < 2 { // see Draft
		return nil, mlx.Array{}, nil
	}
	seed := rng.Uint64()
	var out []int
	var q mlx.Array
	err := d.worker.Do(ctx, func() error {
		s := mlx.NewScope()
		defer s.Close()
		var tok mlx.Array
		_, err := d.logits(history, n, func(logits mlx.Array) []mlx.Array {
			tok, q = drawSubsetRows(logits, temperature, mlx.RandomKey(seed), d.subset())
			return []mlx.Array{tok, q}
		})
		if err != nil {
			return err
		}
		if out, err = intsOf(tok); err != nil {
			return err
		}
		mlx.Detach(q) // evaluated: the caller may use it on another worker
		return nil
	})
	if err != nil {
		return nil, mlx.Array{}, fmt.Errorf("dflash: %w", err)
	}
	return out, q, nil
}

// DraftTop is Draft at a temperature above 0 for a verifier on another device (a pipeline's last
// stage), which needs the proposals on the wire: each draft's distribution is truncated on the
// device to its topK most likely tokens and renormalised, the draft is drawn from that truncated
// distribution, and only the drafts and the truncated distributions (k x topK entries, tokens of
// probability 0 left out) are read back, never k vocabulary-sized rows. The rejection rule stays
// exact when it verifies each draft against the distribution returned with it. One evaluation
// and three reads a block.
func (d *DFlashDrafter) DraftTop(ctx context.Context, history []int, k, topK int, temperature float64, rng *rand.Rand) ([]int, [][]TokenProb, error) {
	if !(temperature > 0) || topK < 1 {
		return nil, nil, fmt.Errorf("dflash: truncated draft at temperature %v with top-k %d: want a temperature above 0 and top-k of at least 1", temperature, topK)
	}
	n := min(k, d.BlockSize()-1)
	if n < 1 || len(history) < 2 { // see Draft
		return nil, nil, nil
	}
	seed := rng.Uint64()
	var out []int
	var top [][]TokenProb
	err := d.worker.Do(ctx, func() error {
		s := mlx.NewScope()
		defer s.Close()
		var tok, ids, p mlx.Array
		_, err := d.logits(history, n, func(logits mlx.Array) []mlx.Array {
			tok, ids, p = drawTop(logits, temperature, topK, mlx.RandomKey(seed))
			if sub := d.subset(); sub != nil {
				tok, ids = sub.ToVocab(tok), sub.ToVocab(ids)
			}
			return []mlx.Array{tok, ids, p}
		})
		if err != nil {
			return err
		}
		if out, err = intsOf(tok); err != nil {
			return err
		}
		cand, err := intsOf(ids)
		if err != nil {
			return err
		}
		probs, err := p.Float32s()
		if err != nil {
			return err
		}
		w := len(cand) / n
		top = make([][]TokenProb, n)
		for i := range top {
			for j := i * w; j < (i+1)*w; j++ {
				if probs[j] > 0 {
					top[i] = append(top[i], TokenProb{ID: cand[j], P: probs[j]})
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("dflash: %w", err)
	}
	return out, top, nil
}

// ValidDraftConfidence reports whether p can be a draft confidence (SetConfidence): 0 (whole
// drafts) up to below 1, where a draft could never be kept whole.
func ValidDraftConfidence(p float64) bool { return p >= 0 && p < 1 }

// confidentPrefix is how many leading positions keep the product of their probabilities ps at
// or above p.
func confidentPrefix(ps []float32, p float64) int {
	joint := 1.0
	for i, q := range ps {
		if joint *= float64(q); joint < p {
			return i
		}
	}
	return len(ps)
}

// intsOf reads an evaluated int32 array back as ints.
func intsOf(a mlx.Array) ([]int, error) {
	ids, err := a.Int32s()
	if err != nil {
		return nil, err
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out, nil
}

// subset is the draft's head vocabulary, or nil.
func (d *DFlashDrafter) subset() *model.VocabSubset {
	if d.rows == nil {
		return nil
	}
	return d.rows.Subset()
}

// drawSubsetRows is drawRows for logits [n, m] over the tokens of sub (all of the vocabulary
// when sub is nil): tok [n] are token ids of the vocabulary, and q [n, vocab] the distributions
// over the whole vocabulary, exactly 0 outside sub, so that the rejection rule stays exact.
func drawSubsetRows(logits mlx.Array, temperature float64, key mlx.Array, sub *model.VocabSubset) (tok, q mlx.Array) {
	tok, q = drawRows(logits, temperature, key)
	if sub == nil {
		return tok, q
	}
	return sub.ToVocab(tok), sub.Expand(q, 0)
}

// logits runs the draft for history and returns the logits of the first n drafted positions,
// [n, HeadVocab()] (column i of a head vocabulary scores its i-th token), in the open scope. The
// context is every position before the last token of history (the anchor); the caches take the
// part they do not hold yet. What outputs derives from the
// logits is evaluated with the caches in one evaluation (the logits themselves when outputs is
// nil), so that a draft step synchronises with the device once. Must run on the target's thread.
func (d *DFlashDrafter) logits(history []int, n int, outputs func(logits mlx.Array) []mlx.Array) (mlx.Array, error) {
	t := d.features()
	if t == nil {
		return mlx.Array{}, fmt.Errorf("the target is not recording hidden states: a DFlash drafter runs only inside its target's Engine.GenerateSpec, or a pipeline driver's")
	}
	end := len(history) - 1
	keep := commonPrefix(d.fed, history[:end])
	if keep == end { // nothing new: feed the last context position again, the forward needs one
		keep--
	}
	if drop := len(d.fed) - keep; drop > 0 {
		for _, c := range d.caches {
			c.Trim(drop)
		}
		d.fed = d.fed[:keep]
	}
	ctx, err := t.view(keep, end, history)
	if err != nil {
		return mlx.Array{}, err
	}
	cfg := d.m.Config()
	vocab := d.embed.Config().VocabSize
	if a := history[end]; a < 0 || a >= vocab {
		return mlx.Array{}, fmt.Errorf("anchor token %d is outside the vocabulary of %d", a, vocab)
	}
	ids := make([]int32, cfg.BlockSize)
	ids[0] = int32(history[end])
	for i := 1; i < len(ids); i++ {
		ids[i] = int32(cfg.MaskTokenID)
	}
	block := d.embed.Embed(mlx.FromInt32s(ids, 1, len(ids)))
	h := d.m.Forward(block, ctx, d.caches)
	h = mlx.Slice(h, []int{0, 1, 0}, []int{1, 1 + n, h.Dim(2)})
	var logits mlx.Array
	if d.rows != nil {
		logits = mlx.Reshape(d.rows.Unembed(h), n, -1)
	} else {
		logits = mlx.Reshape(d.head.Unembed(h), n, -1)
	}
	state := []mlx.Array{logits}
	if outputs != nil {
		state = outputs(logits)
	}
	for _, c := range d.caches {
		state = append(state, c.State()...)
	}
	if err := mlx.Eval(state...); err != nil {
		d.reset() // the caches may hold part of this step
		return mlx.Array{}, err
	}
	d.fed = append(d.fed, history[keep:end]...)
	// Keep the last context position recorded, for a repeated Draft of the same history.
	return logits, t.discard(end - 1)
}

// features is the record of the target's hidden states the drafter reads.
func (d *DFlashDrafter) features() *taps {
	if d.target != nil {
		return d.target.taps
	}
	return d.stage.taps
}
