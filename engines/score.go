package engines

import (
	"context"
	"errors"
)

// LogProbs returns the log-probability the model gives each token of tokens after the ones before
// it: len(tokens)-1 values, from one forward over the whole sequence with empty caches. It is what
// perplexity and the fidelity tests against mlx-lm are computed from.
func (e *Engine) LogProbs(ctx context.Context, tokens []int) ([]float64, error) {
	if len(tokens) < 2 {
		return nil, errors.New("engines: log-probabilities need at least two tokens")
	}
	var out []float64
	err := e.worker.Do(ctx, func() error {
		for _, c := range e.caches {
			c.Reset()
		}
		e.fed = e.fed[:0]
		_, lp, _, err := e.scoreAll(tokens, true)
		if err != nil {
			return err
		}
		out = make([]float64, len(tokens)-1)
		for i := range out {
			out[i] = float64(lp[i][tokens[i+1]])
		}
		return nil
	})
	return out, err
}
