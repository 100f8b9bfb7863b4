package engines

import (
	"context"
	"fmt"
	"math"
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
	// taps records the features a DFlash drafter beside this stage conditions on (see
	// RecordTaps); nil otherwise.
	taps *taps
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
	// Taps lists target layers whose outputs the stage returns (those it runs) for every
	// position, in StageResult.Features.
	Taps []int
}

// Feature is one tapped layer's output for every position of a block: [positions, hidden] in
// the stage's compute dtype, raw little-endian bytes.
type Feature struct {
	Layer int
	Data  []byte
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
	// Tokens is, after Verify, the greedy token after each of the asked positions.
	Tokens []int
	// Features holds the outputs of the tapped layers this stage runs (see Activation.Taps), in
	// the order asked.
	Features []Feature
	// Forward is the stage's own compute time, measured after evaluation.
	Forward time.Duration
}

// input builds the stage's input for in (embedded tokens on the first stage, the received hidden
// state on the others) and checks in's taps; it returns the input and its positions.
func (s *Stage) input(in Activation) (mlx.Array, int, error) {
	m := s.model
	for _, l := range in.Taps {
		if l < 0 || l >= m.Config().NumLayers {
			return mlx.Array{}, 0, fmt.Errorf("stage %v: tapped layer %d is outside the model's %d layers", m.Range, l, m.Config().NumLayers)
		}
	}
	if s.First() {
		ids, err := tokenIDs(in.Tokens, m.Config().VocabSize)
		if err != nil {
			return mlx.Array{}, 0, err
		}
		return m.Embed(mlx.FromInt32s(ids, 1, len(ids))), len(ids), nil
	}
	n := in.Len
	if n <= 0 {
		return mlx.Array{}, 0, fmt.Errorf("stage %v: activation has %d positions", m.Range, n)
	}
	h, err := s.hiddenIn(in, n)
	return h, n, err
}

// hiddenIn is the incoming hidden state of n positions as an array: in.Array as it is, or
// in.Hidden's bytes copied in.
func (s *Stage) hiddenIn(in Activation, n int) (mlx.Array, error) {
	hidden := s.model.Config().HiddenSize
	if !in.Array.Valid() {
		if want := n * hidden * s.dtype.Size(); len(in.Hidden) != want {
			return mlx.Array{}, fmt.Errorf("stage %v: activation of %d positions has %d bytes; want %d", s.model.Range, n, len(in.Hidden), want)
		}
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

// layers runs h through the stage's layers and returns the output and the outputs of the layers
// of taps that the stage runs (their layer ids in tapped, in taps order).
func (s *Stage) layers(h mlx.Array, taps []int) (out mlx.Array, tapped []int, feats []mlx.Array) {
	m := s.model
	for i := m.Range.From; i < m.Range.To; i++ {
		h = m.Layer(i, h, s.caches[i])
		for _, l := range taps {
			if l == i {
				tapped, feats = append(tapped, l), append(feats, h)
			}
		}
	}
	return h, tapped, feats
}

// readFeatures reads the evaluated tapped outputs.
func readFeatures(tapped []int, feats []mlx.Array) ([]Feature, error) {
	out := make([]Feature, len(tapped))
	for i, a := range feats {
		b, err := a.Bytes()
		if err != nil {
			return nil, err
		}
		out[i] = Feature{Layer: tapped[i], Data: b}
	}
	return out, nil
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
	return s.pass(ctx, in, nil, func(res *StageResult, h mlx.Array, n int, feats []mlx.Array) error {
		m := s.model
		switch {
		case !s.Last():
			if err := mlx.Eval(append([]mlx.Array{h}, feats...)...); err != nil {
				return err
			}
			if s.deviceHidden {
				mlx.Detach(h) // the caller's now
				res.Hidden = Activation{Array: h, Len: n}
				return nil
			}
			b, err := h.Bytes()
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
			outs := append([]mlx.Array{tok}, feats...)
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
			state := feats
			for i := m.Range.From; i < m.Range.To; i++ {
				state = append(state, s.caches[i].State()...)
			}
			return mlx.Eval(state...)
		}
		return nil
	})
}

// pass runs in through the stage's layers on the stage's thread, in one scope, and times it. It
// builds the input, lets check see its positions before any cache moves (check may be nil),
// records the layers (keeping the outputs of the layers in.Taps names), and hands their output to
// finish, which evaluates what it needs together with feats and fills res. pass then reads the
// evaluated tapped outputs into res.Features and the stage's compute time into res.Forward.
func (s *Stage) pass(ctx context.Context, in Activation, check func(n int) error, finish func(res *StageResult, h mlx.Array, n int, feats []mlx.Array) error) (StageResult, error) {
	res := StageResult{Token: -1}
	err := s.worker.Do(ctx, func() error {
		start := time.Now()
		sc := mlx.NewScope()
		defer sc.Close()
		h, n, err := s.input(in)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(n); err != nil {
				return err
			}
		}
		h, tapped, feats := s.layers(h, in.Taps)
		if err := finish(&res, h, n, feats); err != nil {
			return err
		}
		if res.Features, err = readFeatures(tapped, feats); err != nil {
			return err
		}
		res.Forward = time.Since(start)
		return nil
	})
	return res, err
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
		if s.taps != nil {
			s.taps.feats.Free()
		}
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

// Verify runs in through the last stage and returns, in Tokens, the greedy token after each of
// the last outputs positions (speculative verification of a drafted block), and the tapped
// features in.Taps asks for; caches keep every position.
func (s *Stage) Verify(ctx context.Context, in Activation, outputs int) (StageResult, error) {
	if !s.Last() {
		return StageResult{Token: -1}, fmt.Errorf("stage %v: only the last stage verifies", s.model.Range)
	}
	check := func(n int) error {
		if outputs < 1 || outputs > n {
			return fmt.Errorf("stage %v: %d outputs for %d positions", s.model.Range, outputs, n)
		}
		return nil
	}
	return s.pass(ctx, in, check, func(res *StageResult, h mlx.Array, n int, feats []mlx.Array) error {
		last := mlx.Slice(h, []int{0, n - outputs, 0}, []int{1, n, h.Dim(2)})
		logits := mlx.Reshape(s.model.Head(last), outputs, -1)
		// Normalised first, as the sampler does, so greedy choices match standalone decoding.
		lp := mlx.Sub(logits, mlx.LogSumExp(logits, true, -1))
		am := mlx.AsType(mlx.Argmax(lp, -1, false), mlx.Int32)
		if err := mlx.Eval(append([]mlx.Array{am}, feats...)...); err != nil {
			return err
		}
		ids, err := am.Int32s()
		if err != nil {
			return err
		}
		for _, id := range ids {
			res.Tokens = append(res.Tokens, int(id))
		}
		return nil
	})
}

// VerifySampled runs in through the last stage and applies the rejection rule of speculative
// sampling at temperature to drafts, the last len(drafts) positions of in (see sampleVerify):
// dists are the drafter's distributions of its drafts (nil for deterministic drafts), and the
// device's random key comes from seed. Tokens are the kept drafts and one token from the target
// (with no drafts: the next token, drawn from the whole distribution of the last position).
// Features are as in Verify.
func (s *Stage) VerifySampled(ctx context.Context, in Activation, drafts []int, dists [][]float32, temperature float64, seed uint64) (StageResult, error) {
	if !s.Last() {
		return StageResult{Token: -1}, fmt.Errorf("stage %v: only the last stage verifies", s.model.Range)
	}
	if !(temperature > 0) || math.IsInf(temperature, 0) {
		return StageResult{Token: -1}, fmt.Errorf("stage %v: sampling temperature %v: want a finite value above 0", s.model.Range, temperature)
	}
	outputs := len(drafts) + 1
	check := func(n int) error {
		if outputs > n {
			return fmt.Errorf("stage %v: %d drafts for %d positions", s.model.Range, len(drafts), n)
		}
		return nil
	}
	return s.pass(ctx, in, check, func(res *StageResult, h mlx.Array, n int, feats []mlx.Array) error {
		if len(feats) > 0 {
			if err := mlx.Eval(feats...); err != nil {
				return err
			}
		}
		last := mlx.Slice(h, []int{0, n - outputs, 0}, []int{1, n, h.Dim(2)})
		logits := mlx.Reshape(s.model.Head(last), outputs, -1)
		q, err := proposal{dists: dists}.array(len(drafts), logits.Dim(1))
		if err != nil {
			return err
		}
		res.Tokens, err = sampleVerify(logits, drafts, q, temperature, mlx.RandomKey(seed))
		return err
	})
}

// StartTaps makes the stage keep a record of tapped target features, in the order of layers (a
// DFlash drafter beside the stage reads it); nil stops and frees the record. The driver fills it
// with RecordTaps.
func (s *Stage) StartTaps(ctx context.Context, layers []int) error {
	return s.worker.Do(ctx, func() error {
		if s.taps != nil {
			s.taps.feats.Free()
			s.taps = nil
		}
		if layers != nil {
			s.taps = newTaps(layers)
		}
		return nil
	})
}

// RecordTaps records the features of tokens fed from position start: feats[i] holds, for every
// position, the output of the i-th layer StartTaps named, as [len(tokens), hidden] in the stage's
// dtype. Rows recorded at start and beyond are replaced.
func (s *Stage) RecordTaps(ctx context.Context, start int, tokens []int, feats [][]byte) error {
	return s.worker.Do(ctx, func() error {
		t := s.taps
		if t == nil {
			return fmt.Errorf("stage %v: no tapped features are being recorded: call StartTaps first", s.model.Range)
		}
		if len(feats) != len(t.layers) {
			return fmt.Errorf("stage %v: %d tapped features for %d layers", s.model.Range, len(feats), len(t.layers))
		}
		n, hidden := len(tokens), s.model.Config().HiddenSize
		if n == 0 {
			return nil
		}
		sc := mlx.NewScope()
		parts := make([]mlx.Array, len(feats))
		for i, f := range feats {
			if want := n * hidden * s.dtype.Size(); len(f) != want {
				sc.Close()
				return fmt.Errorf("stage %v: tapped feature of layer %d has %d bytes; want %d (%d positions of %d in %s)",
					s.model.Range, t.layers[i], len(f), want, n, hidden, s.dtype)
			}
			parts[i] = mlx.FromBytes(f, s.dtype, 1, n, hidden)
		}
		feat := parts[0]
		if len(parts) > 1 {
			feat = mlx.Concat(2, parts...)
		}
		mlx.Detach(feat)
		if err := sc.Close(); err != nil {
			feat.Free()
			return err
		}
		if err := t.add(start, tokens, feat); err != nil {
			s.taps = newTaps(t.layers)
			t.feats.Free()
			return err
		}
		return nil
	})
}
