package engines

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// normalisedArgmax is the standalone sampler's greedy pick for each row: argmax(logits -
// logsumexp(logits)) in the logits' dtype. Must run on an MLX thread inside a scope.
func normalisedArgmax(t *testing.T, logits mlx.Array, raw bool) []int {
	t.Helper()
	x := logits
	if !raw {
		x = mlx.Sub(logits, mlx.LogSumExp(logits, true, -1))
	}
	ids, err := mlx.AsType(mlx.Argmax(x, -1, false), mlx.Int32).Int32s()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

// TestGreedyPicksMatchNormalisedArgmax is the parity test of the cheap greedy verification: in
// every dtype, greedyPicks returns the normalised argmax the standalone sampler takes, including
// rows where the raw argmax differs from it (two logits that rounding merges after the shift),
// and it skips the normalisation on rows without a close call.
func TestGreedyPicksMatchNormalisedArgmax(t *testing.T) {
	const vocab = 49152 // SmolLM2's
	w := mlx.NewWorker()
	defer w.Close()
	// merge puts 1.0 at index 2 and the next representable value above it at index 5, everything
	// else at 0: logsumexp is about ln(vocab) = 10.8, where the dtype's spacing is coarser than
	// at 1.0, so both round to the same normalised value and the normalised argmax is index 2
	// while the raw argmax is 5.
	merge := func(next float32) func(*rand.Rand) []float32 {
		return func(*rand.Rand) []float32 {
			row := make([]float32, vocab)
			row[2], row[5] = 1, next
			return row
		}
	}
	random := func(scale float64) func(*rand.Rand) []float32 {
		return func(r *rand.Rand) []float32 {
			row := make([]float32, vocab)
			for i := range row {
				row[i] = float32(r.NormFloat64() * scale)
			}
			row[r.IntN(vocab)] += 10 // a clear winner
			return row
		}
	}
	exactTie := func(r *rand.Rand) []float32 {
		row := random(1)(r)
		row[100], row[7] = 30, 30
		return row
	}
	cases := []struct {
		name           string
		dt             mlx.DType
		row            func(*rand.Rand) []float32
		wantNormalised bool
		wantRawDiffers bool
	}{
		{"f32/separated", mlx.Float32, random(1), false, false},
		{"bf16/separated", mlx.BFloat16, random(1), false, false},
		{"f16/separated", mlx.Float16, random(1), false, false},
		{"f32/merge", mlx.Float32, merge(math.Nextafter32(1, 2)), true, true},
		{"bf16/merge", mlx.BFloat16, merge(1 + 1.0/128), true, true},
		{"f16/merge", mlx.Float16, merge(1 + 1.0/1024), true, true},
		{"f32/exact-tie", mlx.Float32, exactTie, true, false},
		{"bf16/exact-tie", mlx.BFloat16, exactTie, true, false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			const rows = 9 // K+1 for K = 8
			data := make([]float32, 0, rows*vocab)
			for range rows {
				data = append(data, tc.row(rng)...)
			}
			err := w.Do(context.Background(), func() error {
				s := mlx.NewScope()
				defer s.Close()
				logits := mlx.AsType(mlx.FromFloat32s(data, rows, vocab), tc.dt)
				if err := mlx.Eval(logits); err != nil {
					return err
				}
				want := normalisedArgmax(t, logits, false)
				raw := normalisedArgmax(t, logits, true)
				got, normalised, err := greedyPicks(logits)
				if err != nil {
					return err
				}
				for r := range want {
					if got[r] != want[r] {
						t.Errorf("row %d: got %d, want the normalised argmax %d (raw argmax %d)", r, got[r], want[r], raw[r])
					}
				}
				if normalised != tc.wantNormalised {
					t.Errorf("normalised = %v, want %v", normalised, tc.wantNormalised)
				}
				differs := false
				for r := range want {
					differs = differs || raw[r] != want[r]
				}
				if differs != tc.wantRawDiffers {
					t.Errorf("raw argmax differs from the normalised one: %v, want %v (raw %v, normalised %v)", differs, tc.wantRawDiffers, raw[:2], want[:2])
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// BenchmarkGreedyPick measures what a greedy verify step spends on picking tokens from the
// [K+1, vocab] logits (K = 8, SmolLM2's vocabulary): normalising every position, as scoreAll
// did, against greedyPicks. Run: go test ./engines -run '^$' -bench GreedyPick
func BenchmarkGreedyPick(b *testing.B) {
	const rows, vocab = 9, 49152
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]float32, rows*vocab)
	for i := range data {
		data[i] = float32(rng.NormFloat64())
	}
	for r := range rows {
		data[r*vocab+rng.IntN(vocab)] += 10 // no close call: greedyPicks skips the normalisation
	}
	w := mlx.NewWorker()
	defer w.Close()
	for _, dt := range []mlx.DType{mlx.Float32, mlx.BFloat16} {
		var logits mlx.Array
		w.Do(context.Background(), func() error {
			logits = mlx.AsType(mlx.FromFloat32s(data, rows, vocab), dt)
			mlx.Detach(logits)
			return mlx.Eval(logits)
		})
		b.Run(dt.String()+"/normalise", func(b *testing.B) {
			for b.Loop() {
				w.Do(context.Background(), func() error {
					s := mlx.NewScope()
					defer s.Close()
					lp := mlx.Sub(logits, mlx.LogSumExp(logits, true, -1))
					_, err := mlx.AsType(mlx.Argmax(lp, -1, false), mlx.Int32).Int32s()
					return err
				})
			}
		})
		b.Run(dt.String()+"/greedyPicks", func(b *testing.B) {
			for b.Loop() {
				w.Do(context.Background(), func() error {
					s := mlx.NewScope()
					defer s.Close()
					_, _, err := greedyPicks(logits)
					return err
				})
			}
		})
		w.Do(context.Background(), func() error { logits.Free(); return nil })
	}
}
