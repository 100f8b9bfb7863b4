package engines

import (
	"fmt"
	"math"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// Greedy verification must pick, at every verified position, the token standalone greedy decoding
// picks there: the argmax of logits - logsumexp(logits), as mlx-lm and sampler.sample compute it,
// in the logits' dtype. Normalising a whole [K+1, vocab] block costs an exp per logit and two more
// passes, so greedyPicks takes the argmax of the raw logits and normalises only when that can
// differ.
//
// When can it differ? x -> round(x - c) is monotone (c, the logsumexp, is one number per row), so
// the normalised maximum is the image of the raw maximum m and the normalised argmax is the first
// index whose logit rounds onto it. A logit x < m rounds onto it only when m - x is smaller than
// the width of one rounding cell at |m - c|. Since m <= c <= m + ln(vocab) (plus c's own
// rounding), that width is at most 2^(2-p) (ln(vocab) + 2 + |m| 2^(1-p)) for a p-bit significand:
// about 0.2 in bfloat16, 2e-6 in float32. So when no other logit of the row lies within
// tieMargin(m) of m (twice that bound, computed in float32), the raw argmax is provably the
// normalised one: no rounding can merge it with another logit, and exact ties are counted too.
// Otherwise the row may tie after rounding, and the step normalises as standalone does. In
// float32 that is vanishingly rare; in bfloat16 it happens on close calls, which is where
// standalone's own choice depends on the rounding.

// significand returns the significand bits (with the implicit one) of a floating dtype.
func significand(dt mlx.DType) (int, error) {
	switch dt {
	case mlx.Float32:
		return 24, nil
	case mlx.BFloat16:
		return 8, nil
	case mlx.Float16:
		return 11, nil
	}
	return 0, fmt.Errorf("engines: greedy pick: logits of dtype %v: want float32, bfloat16 or float16", dt)
}

// tieMargin returns a and b such that logits below m - (a + b|m|) cannot round onto m's
// normalised value (see above), for a vocabulary of v ids and p significand bits.
func tieMargin(v, p int) (a, b float64) {
	e := math.Ldexp(1, 3-p) // twice 2^(2-p)
	a = e * (math.Log(float64(v)) + 2)
	// c's rounding (|c| <= |m| + ln v) and the float32 rounding of the threshold itself.
	b = e*math.Ldexp(1, 1-p) + math.Ldexp(1, -20)
	return a, b
}

// greedyPicks returns the standalone greedy choice for every row of logits [n, vocab], evaluating
// the normalised argmax only when a row may tie after normalisation (see above). It also reports
// whether it had to normalise. Must run on the engine's thread, inside a scope that owns logits.
func greedyPicks(logits mlx.Array) (picks []int, normalised bool, err error) {
	p, err := significand(logits.DType())
	if err != nil {
		return nil, false, err
	}
	n, v := logits.Dim(0), logits.Dim(1)
	am := mlx.Argmax(logits, -1, true)                                // [n, 1]
	top := mlx.AsType(mlx.TakeAlongAxis(logits, am, -1), mlx.Float32) // [n, 1]
	a, b := tieMargin(v, p)
	thr := mlx.Sub(top, mlx.AddScalar(mlx.MulScalar(mlx.Abs(top), b), a))
	near := mlx.Sum(mlx.AsType(mlx.GreaterEqual(logits, thr), mlx.Int32), false, -1) // [n]
	am = mlx.AsType(mlx.Reshape(am, n), mlx.Int32)
	if err := mlx.Eval(am, near); err != nil {
		return nil, false, err
	}
	counts, err := near.Int32s()
	if err != nil {
		return nil, false, err
	}
	for _, c := range counts {
		if c != 1 {
			normalised = true
		}
	}
	if normalised {
		// A possible tie after rounding: decide it exactly as the standalone sampler does.
		lp := mlx.Sub(logits, mlx.LogSumExp(logits, true, -1))
		am = mlx.AsType(mlx.Argmax(lp, -1, false), mlx.Int32)
		if err := mlx.Eval(am); err != nil {
			return nil, false, err
		}
	}
	ids, err := am.Int32s()
	if err != nil {
		return nil, false, err
	}
	picks = make([]int, len(ids))
	for i, id := range ids {
		picks[i] = int(id)
	}
	return picks, normalised, nil
}
