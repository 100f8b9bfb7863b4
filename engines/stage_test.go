package engines

import (
	"context"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// TestTopKMatchesFullSort checks the argpartition top-k against sorting the whole vocabulary on
// the host.
func TestTopKMatchesFullSort(t *testing.T) {
	const vocab = 1000
	rng := rand.New(rand.NewPCG(1, 2))
	logits := make([]float32, vocab)
	for i := range logits {
		logits[i] = float32(rng.NormFloat64() * 4)
	}
	// Host reference: log-softmax, then the indices by decreasing value.
	var m float64 = math.Inf(-1)
	for _, v := range logits {
		m = math.Max(m, float64(v))
	}
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v) - m)
	}
	lse := m + math.Log(sum)
	order := make([]int, vocab)
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return logits[order[a]] > logits[order[b]] })

	w := mlx.NewWorker()
	defer w.Close()
	for _, tc := range []struct {
		name string
		k    int
		want int // candidates returned
	}{{"one", 1, 1}, {"some", 64, 64}, {"all", vocab, vocab}, {"more than the vocabulary", vocab + 5, vocab}} {
		t.Run(tc.name, func(t *testing.T) {
			var got []Candidate
			err := w.Do(context.Background(), func() error {
				s := mlx.NewScope()
				defer s.Close()
				idx, vals := topK2(mlx.FromFloat32s(logits, 1, vocab), tc.k)
				if err := mlx.Eval(idx, vals); err != nil {
					return err
				}
				var err error
				got, err = readCandidates(idx, vals)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.want {
				t.Fatalf("%d candidates; want %d", len(got), tc.want)
			}
			for i, c := range got {
				lp := float64(logits[order[i]]) - lse
				if c.ID != order[i] || math.Abs(float64(c.LogProb)-lp) > 1e-4 {
					t.Fatalf("candidate %d = (%d, %.5f); want (%d, %.5f)", i, c.ID, c.LogProb, order[i], lp)
				}
			}
		})
	}
}
