package engines

import (
	"fmt"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// sampler picks the next token from logits [1, vocab]: argmax when temperature is 0, otherwise a
// categorical draw from softmax(logits / temperature), restricted to the top-p nucleus when
// 0 < topP < 1. Draws are reproducible for a seed: each step splits a fresh key from the last.
type sampler struct {
	temp, topP float64
	key        mlx.Array
}

func newSampler(temp, topP float64, seed uint64) *sampler {
	s := &sampler{temp: temp, topP: topP}
	if temp > 0 {
		s.key = mlx.RandomKey(seed)
		mlx.Detach(s.key)
	}
	return s
}

func (s *sampler) free() { s.key.Free() }

// next records the choice of the next token on the device and returns it unevaluated: an int32
// array of one element, owned by the caller. Nothing is evaluated or read, so a decode loop can
// feed it to the next step's forward before the host learns its value.
func (s *sampler) next(logits mlx.Array) mlx.Array {
	sc := mlx.NewScope()
	defer sc.Close()
	var tok mlx.Array
	// Normalised log-probabilities, as mlx-lm samples from. In bf16 the subtraction rounds, so
	// greedy decoding must take the argmax of these, not of the raw logits, to pick the same token.
	logits = mlx.Sub(logits, mlx.LogSumExp(logits, true))
	if s.temp == 0 {
		tok = mlx.Argmax(logits, -1, false)
	} else {
		next, sub := mlx.RandomSplit(s.key)
		mlx.Detach(next)
		s.key.Free()
		s.key = next
		scaled := mlx.MulScalar(mlx.AsType(logits, mlx.Float32), 1/s.temp)
		if s.topP > 0 && s.topP < 1 {
			scaled = nucleus(scaled, s.topP)
		}
		tok = mlx.Categorical(scaled, -1, sub)
	}
	tok = mlx.AsType(tok, mlx.Int32)
	sc.Keep(tok)
	return tok
}

// sample is next followed by the one host read of the chosen id.
func (s *sampler) sample(logits mlx.Array) (int, error) {
	tok := s.next(logits)
	defer tok.Free()
	id, err := tok.Item()
	if err != nil {
		return 0, fmt.Errorf("engines: sample: %w", err)
	}
	return id, nil
}

// nucleus keeps the smallest set of most likely tokens whose probability mass reaches p and sets
// the other logits to -inf.
func nucleus(logits mlx.Array, p float64) mlx.Array {
	probs := mlx.Softmax(logits, -1, true)
	sorted := mlx.Sort(probs, -1) // ascending
	// Mass of everything strictly more likely than each sorted entry, plus itself.
	above := mlx.Sub(mlx.Sum(sorted, true, -1), mlx.Cumsum(sorted, -1))
	keep := mlx.Less(above, mlx.Scalar(p, mlx.Float32)) // entries needed to reach p
	thresh := mlx.Min(mlx.Where(keep, sorted, mlx.Scalar(2, mlx.Float32)), true, -1)
	return mlx.Where(mlx.GreaterEqual(probs, thresh), logits, mlx.Scalar(-1e30, mlx.Float32))
}
