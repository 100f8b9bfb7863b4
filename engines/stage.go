package engines

import (
	"context"
	"fmt"
	"time"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/engines/model"
)

// Stage runs one contiguous layer range of a model: the unit of pipeline parallelism. The first
// stage embeds tokens; the last applies the final norm and lm_head and samples. Methods run one at
// a time on the stage's MLX thread and may be called from any goroutine.
type Stage struct {
	worker *mlx.Worker
	model  *model.Loaded
	caches []model.Cache
	smp    *sampler
	dtype  mlx.DType
	// deviceHidden: Forward returns hidden states as device arrays (StageOptions.DeviceHidden).
	deviceHidden bool
}

// StageOptions configures OpenStage.
type StageOptions struct {
	Model string
	DType string
	Range model.Range
	// DeviceHidden makes Forward on a stage other than the last return its hidden state as an
	// evaluated device array (StageResult.Hidden.Array, which the caller frees) instead of bytes
	// copied to the host: for transports that send MLX arrays themselves (MLX's ring).
	DeviceHidden bool
}

// OpenStage loads the layers of o.Range.
func OpenStage(ctx context.Context, o StageOptions) (*Stage, error) {
	if o.DType == "" {
		o.DType = DefaultDType()
	}
	dt, err := mlx.ParseDType(o.DType)
	if err != nil {
		return nil, err
	}
	s := &Stage{worker: mlx.NewWorker(), dtype: dt, deviceHidden: o.DeviceHidden}
	err = s.worker.Do(ctx, func() error {
		m, err := model.LoadRange(o.Model, dt, o.Range)
		if err != nil {
			return err
		}
		s.model = m
		s.caches = model.NewCaches(m)
		s.smp = newSampler(0, 1, 0)
		return nil
	})
	if err != nil {
		s.worker.Close()
		return nil, err
	}
	return s, nil
}

// Range is the stage's layers.
func (s *Stage) Range() model.Range { return s.model.Range }

// Config is the model's config.
func (s *Stage) Config() *model.Config { return s.model.Config() }

// DType is the compute dtype, which is also the dtype of the hidden states the stage exchanges.
func (s *Stage) DType() mlx.DType { return s.dtype }

// First reports whether the stage embeds tokens; Last whether it produces tokens.
func (s *Stage) First() bool { return s.model.Range.From == 0 }

// Last reports whether the stage holds the model's final layer, norm and lm_head.
func (s *Stage) Last() bool { return s.model.Range.To == s.model.Config().NumLayers }

// Reset starts a request: caches are trimmed to keep positions (0 for a new prompt) so nothing
// stale leaks between requests, and the last stage's sampler is re-seeded.
func (s *Stage) Reset(ctx context.Context, keep int, temperature, topP float64, seed uint64) error {
	return s.worker.Do(ctx, func() error {
		for _, c := range s.caches {
			if c == nil {
				continue
			}
			if keep == 0 {
				c.Reset()
			} else if n := c.Offset() - keep; n > 0 {
				c.Trim(n)
			}
		}
		s.smp.free()
		s.smp = newSampler(temperature, topP, seed)
		if keep == 0 {
			mlx.ResetPeakMemory()
		}
		return nil
	})
}

// PeakMemory is this process's MLX peak memory since the last Reset to position 0.
func (s *Stage) PeakMemory() int64 {
	_, peak, _ := memory(s.worker)
	return peak
}

// Activation is what flows between stages: token ids into the first stage, hidden states
// ([1, L, hidden] in the compute dtype, raw little-endian bytes) between stages.
type Activation struct {
	Tokens []int
	Hidden []byte
	// Array, when valid, holds the hidden state instead of Hidden: an evaluated device array
	// [1, Len, hidden] of the stage's dtype, read without a copy through the host. Its owner
	// frees it; a stage that returns one (StageOptions.DeviceHidden) hands it to the caller.
	Array mlx.Array
	Len   int // positions in Hidden or Array
}

// StageResult is what Forward produced.
type StageResult struct {
	// Hidden is set on all but the last stage.
	Hidden Activation
	// Token is the sampled id when the last stage ran with sample set; -1 otherwise.
	Token int
	// TopK holds the k most likely (id, log-probability) pairs of the last position, most likely
	// first, when the last stage was asked for them.
	TopK []Candidate
	// Forward is the stage's own compute time, measured after evaluation.
	Forward time.Duration
}

// Candidate is a token and its log-probability.
type Candidate struct {
	ID      int
	LogProb float32
}

// Forward runs in through the stage's layers. On the last stage with sample set, the head runs on
// the last position and a token is sampled (and, with topK > 0, the topK most likely tokens are
// returned too); without it (prefill chunks) only the caches are filled.
func (s *Stage) Forward(ctx context.Context, in Activation, sample bool, topK int) (StageResult, error) {
	res := StageResult{Token: -1}
	err := s.worker.Do(ctx, func() error {
		start := time.Now()
		sc := mlx.NewScope()
		defer sc.Close()
		m := s.model
		var h mlx.Array
		n := in.Len
		if s.First() {
			ids, err := tokenIDs(in.Tokens, m.Config().VocabSize)
			if err != nil {
				return err
			}
			n = len(ids)
			h = m.Embed(mlx.FromInt32s(ids, 1, n))
		} else {
			if n <= 0 {
				return fmt.Errorf("stage %v: activation has %d positions", m.Range, n)
			}
			var err error
			if h, err = s.hiddenIn(in, n); err != nil {
				return err
			}
		}
		for i := m.Range.From; i < m.Range.To; i++ {
			h = m.Layer(i, h, s.caches[i])
		}
		switch {
		case !s.Last() && s.deviceHidden:
			if err := mlx.Eval(h); err != nil {
				return err
			}
			mlx.Detach(h) // the caller's now
			res.Hidden = Activation{Array: h, Len: n}
		case !s.Last():
			b, err := h.Bytes() // evaluates
			if err != nil {
				return err
			}
			res.Hidden = Activation{Hidden: b, Len: n}
		case sample:
			// One evaluation for the token and the candidates; the [1, vocab] logits are never
			// an output of their own.
			last := mlx.Slice(h, []int{0, n - 1, 0}, []int{1, n, h.Dim(2)})
			logits := mlx.Reshape(m.Head(last), 1, -1)
			tok := s.smp.next(logits)
			defer tok.Free()
			outs := []mlx.Array{tok}
			var idx, vals mlx.Array
			if topK > 0 {
				idx, vals = topK2(logits, topK)
				outs = append(outs, idx, vals)
			}
			if err := mlx.Eval(outs...); err != nil {
				return err
			}
			if topK > 0 {
				var err error
				if res.TopK, err = readCandidates(idx, vals); err != nil {
					return err
				}
			}
			id, err := tok.Item()
			if err != nil {
				return err
			}
			res.Token = id
		default:
			var state []mlx.Array
			for i := m.Range.From; i < m.Range.To; i++ {
				state = append(state, s.caches[i].State()...)
			}
			if err := mlx.Eval(state...); err != nil {
				return err
			}
		}
		res.Forward = time.Since(start)
		return nil
	})
	return res, err
}

// hiddenIn is the incoming hidden state of n positions as an array: in.Array as it is, or
// in.Hidden's bytes copied in.
func (s *Stage) hiddenIn(in Activation, n int) (mlx.Array, error) {
	hidden := s.model.Config().HiddenSize
	if !in.Array.Valid() {
		return mlx.FromBytes(in.Hidden, s.dtype, 1, n, hidden), nil
	}
	if sh := in.Array.Shape(); len(sh) != 3 || sh[0] != 1 || sh[1] != n || sh[2] != hidden || in.Array.DType() != s.dtype {
		return mlx.Array{}, fmt.Errorf("stage %v: hidden state array %v of %v; want [1 %d %d] of %v", s.model.Range, sh, in.Array.DType(), n, hidden, s.dtype)
	}
	return in.Array, nil
}

// Free frees an array the stage handed out (a StageResult's Hidden.Array), on the stage's thread.
func (s *Stage) Free(a mlx.Array) {
	s.worker.Do(context.Background(), func() error { a.Free(); return nil })
}

// Close frees the stage.
func (s *Stage) Close() {
	s.worker.Do(context.Background(), func() error {
		for _, c := range s.caches {
			if c != nil {
				c.Free()
			}
		}
		s.smp.free()
		s.model.Close()
		return nil
	})
	s.worker.Close()
}

// topK2 records the k most likely tokens of logits [1, vocab] and their log-probabilities, most
// likely first, as int32 ids and float32 values [1, k] (unevaluated, in the open scope). It
// partitions the vocabulary around the kth largest (argpartition, linear) and sorts only the k
// survivors, rather than sorting the whole vocabulary.
func topK2(logits mlx.Array, k int) (ids, vals mlx.Array) {
	k = min(k, logits.Dim(-1))
	lp := mlx.AsType(mlx.Sub(logits, mlx.LogSumExp(logits, true)), mlx.Float32)
	idx := mlx.Slice(mlx.Argpartition(mlx.Neg(lp), k-1, -1), []int{0, 0}, []int{1, k})
	v := mlx.TakeAlongAxis(lp, idx, -1)
	order := mlx.Argsort(mlx.Neg(v), -1)
	return mlx.AsType(mlx.TakeAlongAxis(idx, order, -1), mlx.Int32), mlx.TakeAlongAxis(v, order, -1)
}

// readCandidates reads what topK2 recorded.
func readCandidates(idx, vals mlx.Array) ([]Candidate, error) {
	ids, err := idx.Int32s()
	if err != nil {
		return nil, err
	}
	v, err := vals.Float32s()
	if err != nil {
		return nil, err
	}
	out := make([]Candidate, len(ids))
	for i := range out {
		out[i] = Candidate{ID: int(ids[i]), LogProb: v[i]}
	}
	return out, nil
}

// Verify runs in through the last stage and returns the greedy token after each of the last
// outputs positions (speculative verification of a drafted block); caches keep every position.
func (s *Stage) Verify(ctx context.Context, in Activation, outputs int) ([]int, time.Duration, error) {
	if !s.Last() {
		return nil, 0, fmt.Errorf("stage %v: only the last stage verifies", s.model.Range)
	}
	var out []int
	var took time.Duration
	err := s.worker.Do(ctx, func() error {
		start := time.Now()
		sc := mlx.NewScope()
		defer sc.Close()
		m := s.model
		n := in.Len
		if outputs < 1 || outputs > n {
			return fmt.Errorf("stage %v: %d outputs for %d positions", m.Range, outputs, n)
		}
		var h mlx.Array
		if s.First() {
			ids, err := tokenIDs(in.Tokens, m.Config().VocabSize)
			if err != nil {
				return err
			}
			n = len(ids)
			h = m.Embed(mlx.FromInt32s(ids, 1, n))
		} else {
			var err error
			if h, err = s.hiddenIn(in, n); err != nil {
				return err
			}
		}
		for i := m.Range.From; i < m.Range.To; i++ {
			h = m.Layer(i, h, s.caches[i])
		}
		last := mlx.Slice(h, []int{0, n - outputs, 0}, []int{1, n, h.Dim(2)})
		logits := mlx.Reshape(m.Head(last), outputs, -1)
		// Normalised first, as the sampler does, so greedy choices match standalone decoding.
		lp := mlx.Sub(logits, mlx.LogSumExp(logits, true, -1))
		ids, err := mlx.AsType(mlx.Argmax(lp, -1, false), mlx.Int32).Int32s()
		if err != nil {
			return err
		}
		for _, id := range ids {
			out = append(out, int(id))
		}
		took = time.Since(start)
		return nil
	})
	return out, took, err
}
