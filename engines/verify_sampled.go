package engines

import (
	"fmt"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// sampleVerify is the rejection rule of speculative sampling (Leviathan et al.; Chen et al.) on
// the device: logits [K+1, vocab] are the target's at the K drafted positions and the one after
// them; dists the drafter's distributions of its K tokens (nil: a deterministic drafter, one-hot).
// Draft j is kept while u_j < p_j(d_j) / q_j(d_j); the first rejected position draws from the
// residual max(0, p_j - q_j) normalised, and when every draft is kept the last position draws from
// p_K. All K+1 possible replacement tokens are drawn at once on the device, so the host reads back
// only K acceptance flags and K+1 token ids, never a [K+1, vocab] block. key is consumed (split
// by the caller). Must run on the engine's thread inside a scope.
func sampleVerify(logits mlx.Array, drafts []int, dists [][]float32, temperature float64, key mlx.Array) ([]int, error) {
	k := len(drafts)
	if logits.Dim(0) != k+1 {
		return nil, fmt.Errorf("engines: sample verify: %d logit rows for %d drafts; want %d", logits.Dim(0), k, k+1)
	}
	if dists != nil && len(dists) != k {
		return nil, fmt.Errorf("engines: sample verify: %d draft distributions for %d drafts", len(dists), k)
	}
	v := logits.Dim(1)
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
	var q mlx.Array
	if dists != nil {
		flat := make([]float32, 0, k*v)
		for i, row := range dists {
			if len(row) != v {
				return nil, fmt.Errorf("engines: sample verify: draft distribution %d has %d entries; the target's vocabulary has %d", i, len(row), v)
			}
			flat = append(flat, row...)
		}
		q = mlx.FromFloat32s(flat, k, v)
	} else {
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
