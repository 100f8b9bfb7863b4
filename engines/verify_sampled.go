package engines

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// deviceDrafter is a Drafter whose sampled proposals can stay on the device: draftOnDevice is
// Draft at a temperature above 0 with the distributions returned as one evaluated float32 array
// [len(tokens), vocab] instead of host rows (invalid when no token was drafted). The caller owns
// the array and frees it on an MLX worker; it may use it on another worker than the drafter's,
// since it is evaluated and workers take turns.
type deviceDrafter interface {
	draftOnDevice(ctx context.Context, history []int, k int, temperature float64, rng *rand.Rand) ([]int, mlx.Array, error)
}

// proposal is what a drafter proposed its sampled drafts from: host rows (Drafter.Draft), a
// device array (deviceDrafter), or neither for a deterministic drafter.
type proposal struct {
	dists [][]float32
	q     mlx.Array
}

// array returns the proposal of k drafts as a float32 array [k, v] for sampleVerify: q itself,
// the host rows copied to the device (in the open scope), or an invalid array for a
// deterministic drafter. Must run on an MLX worker.
func (p proposal) array(k, v int) (mlx.Array, error) {
	if p.q.Valid() || p.dists == nil {
		return p.q, nil
	}
	if len(p.dists) != k {
		return mlx.Array{}, fmt.Errorf("engines: sample verify: %d draft distributions for %d drafts", len(p.dists), k)
	}
	if k == 0 {
		return mlx.Array{}, nil
	}
	flat := make([]float32, 0, len(p.dists)*v)
	for i, row := range p.dists {
		if len(row) != v {
			return mlx.Array{}, fmt.Errorf("engines: sample verify: draft distribution %d has %d entries; the target's vocabulary has %d", i, len(row), v)
		}
		flat = append(flat, row...)
	}
	return mlx.FromFloat32s(flat, len(p.dists), v), nil
}

// drawRows draws one token from each row of logits [n, vocab] at temperature on the device, with
// key (consumed): the tokens as int32 [n], and the distributions they were drawn from,
// softmax(logits / temperature) in float32 [n, vocab], the proposal sampleVerify compares the
// target with. Nothing is evaluated; the arrays belong to the open scope.
func drawRows(logits mlx.Array, temperature float64, key mlx.Array) (tok, q mlx.Array) {
	scaled := mlx.MulScalar(mlx.AsType(logits, mlx.Float32), 1/temperature)
	tok = mlx.AsType(mlx.Categorical(scaled, -1, key), mlx.Int32)
	return tok, mlx.Softmax(scaled, -1, true)
}

// TokenProb is one entry of a sparse distribution: a token id and its probability.
type TokenProb struct {
	ID int
	P  float32
}

// drawTop is drawRows with each row's distribution truncated to its topK most likely tokens and
// renormalised: ids [n, topK] int32 are those tokens (in no particular order), p [n, topK] float32
// their probabilities in the truncated distribution, and tok [n] int32 the token drawn from it,
// with key (consumed). The vocabulary is partitioned around the topK-th largest (argpartition,
// linear), never sorted. Nothing is evaluated; the arrays belong to the open scope.
func drawTop(logits mlx.Array, temperature float64, topK int, key mlx.Array) (tok, ids, p mlx.Array) {
	n := logits.Dim(0)
	topK = min(topK, logits.Dim(1))
	scaled := mlx.MulScalar(mlx.AsType(logits, mlx.Float32), 1/temperature)
	ids = mlx.AsType(mlx.Slice(mlx.Argpartition(mlx.Neg(scaled), topK-1, -1), []int{0, 0}, []int{n, topK}), mlx.Int32)
	top := mlx.TakeAlongAxis(scaled, ids, -1)
	pick := mlx.Reshape(mlx.AsType(mlx.Categorical(top, -1, key), mlx.Int32), n, 1)
	tok = mlx.Reshape(mlx.TakeAlongAxis(ids, pick, -1), n)
	return tok, ids, mlx.Softmax(top, -1, true)
}

// hostRows reads a device proposal q [k, vocab] back as k host rows, for Drafter.Draft's callers
// that need them on the host (the rows share one buffer). Must run on an MLX worker.
func hostRows(q mlx.Array) ([][]float32, error) {
	flat, err := q.Float32s()
	if err != nil {
		return nil, err
	}
	k, v := q.Dim(0), q.Dim(1)
	rows := make([][]float32, k)
	for i := range rows {
		rows[i] = flat[i*v : (i+1)*v : (i+1)*v]
	}
	return rows, nil
}

// sampleVerify is the rejection rule of speculative sampling (Leviathan et al.; Chen et al.) on
// the device: logits [K+1, vocab] are the target's at the K drafted positions and the one after
// them; q [K, vocab] the drafter's distributions of its K tokens (invalid: a deterministic
// drafter, one-hot; see proposal.array).
// Draft j is kept while u_j < p_j(d_j) / q_j(d_j); the first rejected position draws from the
// residual max(0, p_j - q_j) normalised, and when every draft is kept the last position draws from
// p_K. All K+1 possible replacement tokens are drawn at once on the device, so the host reads back
// only K acceptance flags and K+1 token ids, never a [K+1, vocab] block. key is consumed (split
// by the caller). Must run on the engine's thread inside a scope.
func sampleVerify(logits mlx.Array, drafts []int, q mlx.Array, temperature float64, key mlx.Array) ([]int, error) {
	k := len(drafts)
	if logits.Dim(0) != k+1 {
		return nil, fmt.Errorf("engines: sample verify: %d logit rows for %d drafts; want %d", logits.Dim(0), k, k+1)
	}
	v := logits.Dim(1)
	if q.Valid() && k > 0 && (q.Ndim() != 2 || q.Dim(0) != k || q.Dim(1) != v) {
		return nil, fmt.Errorf("engines: sample verify: draft distributions of shape %v for %d drafts; want [%d %d] (the target's vocabulary)", q.Shape(), k, k, v)
	}
	p := mlx.Softmax(mlx.MulScalar(mlx.AsType(logits, mlx.Float32), 1/temperature), -1, true)
	uKey, cKey := mlx.RandomSplit(key)
	if k == 0 {
		tok := mlx.AsType(mlx.Categorical(mlx.Log(p), -1, cKey), mlx.Int32)
		ids, err := tok.Int32s()
		if err != nil {
			return nil, err
		}
		return []int{int(ids[0])}, nil
	}
	ids := make([]int32, k)
	for i, d := range drafts {
		if d < 0 || d >= v {
			return nil, fmt.Errorf("engines: sample verify: draft token %d is outside the vocabulary of %d", d, v)
		}
		ids[i] = int32(d)
	}
	d := mlx.FromInt32s(ids, k, 1)
	pk := mlx.Slice(p, []int{0, 0}, []int{k, v})
	if !q.Valid() {
		q = mlx.AsType(mlx.Equal(mlx.Arange(0, float64(v), 1, mlx.Int32), d), mlx.Float32) // one-hot [k, v]
	}
	pd := mlx.TakeAlongAxis(pk, d, -1) // [k, 1]
	qd := mlx.TakeAlongAxis(q, d, -1)
	u := mlx.Uniform(uKey, mlx.Float32, k, 1)
	// u < p/q, written u*q < p so that q = 0 (a token the drafter could not have drawn) rejects.
	keep := mlx.LogicalAnd(mlx.Greater(qd, mlx.Scalar(0, mlx.Float32)), mlx.Less(mlx.Mul(u, qd), pd))
	residual := mlx.Maximum(mlx.Sub(pk, q), mlx.Scalar(0, mlx.Float32))
	rows := mlx.Concat(0, residual, mlx.Slice(p, []int{k, 0}, []int{k + 1, v}))
	draws := mlx.AsType(mlx.Categorical(mlx.Log(rows), -1, cKey), mlx.Int32) // [k+1]
	keepI := mlx.AsType(mlx.Reshape(keep, k), mlx.Int32)
	if err := mlx.Eval(keepI, draws); err != nil {
		return nil, err
	}
	flags, err := keepI.Int32s()
	if err != nil {
		return nil, err
	}
	toks, err := draws.Int32s()
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, k+1)
	for j := range k {
		if flags[j] == 0 {
			return append(out, int(toks[j])), nil
		}
		out = append(out, drafts[j])
	}
	return append(out, int(toks[k])), nil
}
