package model

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
	"github.com/hippo-bench/hippo/internal/testenv"
)

// rotOp is one step on a cache: update appends that many positions, trim drops that many.
type rotOp struct {
	Update int `json:"update,omitempty"`
	Trim   int `json:"trim,omitempty"`
}

// rotStep is what a cache returned after an op.
type rotStep struct {
	Offset  int   `json:"offset"`
	Keys    []int `json:"keys"`
	Values  []int `json:"values"`
	Trimmed int   `json:"trimmed"`
}

// positions builds [1, 1, n, 2] keys whose values are the positions from..from+n-1.
func positions(from, n int) mlx.Array {
	data := make([]float32, 0, 2*n)
	for p := from; p < from+n; p++ {
		data = append(data, float32(p), float32(p))
	}
	return mlx.FromFloat32s(data, 1, 1, n, 2)
}

// readPositions returns the position stored in each slot of a [1, 1, n, 2] array, column col.
func readPositions(a mlx.Array, col int) ([]int, error) {
	f, err := mlx.AsType(a, mlx.Float32).Float32s()
	if err != nil {
		return nil, err
	}
	out := make([]int, 0, len(f)/2)
	for i := col; i < len(f); i += 2 {
		out = append(out, int(f[i]))
	}
	return out, nil
}

// runRotating applies ops to a fresh cache and records each step.
func runRotating(t *testing.T, w *mlx.Worker, maxSize, keep int, ops []rotOp) []rotStep {
	t.Helper()
	var steps []rotStep
	err := w.Do(context.Background(), func() error {
		c := NewRotatingKVCache(maxSize, keep)
		defer c.Free()
		pos := 0
		for _, op := range ops {
			if op.Trim > 0 {
				n := c.Trim(op.Trim)
				pos -= n
				steps = append(steps, rotStep{Offset: c.Offset(), Keys: []int{}, Values: []int{}, Trimmed: n})
				continue
			}
			s := mlx.NewScope()
			x := positions(pos, op.Update)
			k, v := c.Update(x, mlx.Copy(x))
			pos += op.Update
			keys, err := readPositions(k, 0)
			if err != nil {
				s.Close()
				return err
			}
			values, err := readPositions(v, 1)
			if err != nil {
				s.Close()
				return err
			}
			steps = append(steps, rotStep{Offset: c.Offset(), Keys: keys, Values: values})
			if err := s.Close(); err != nil {
				return err
			}
			// The cache must own its buffers once the caller's scope is gone.
			if err := mlx.Eval(c.State()...); err != nil {
				return fmt.Errorf("cache state after the scope closed: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return steps
}

// TestRotatingKVCacheMatchesMLXLM replays sequences of updates and trims on our cache and on
// mlx-lm's RotatingKVCache and compares, after every step, the offset and which positions the
// returned keys and values hold, in order (rotated order included).
func TestRotatingKVCacheMatchesMLXLM(t *testing.T) {
	u := func(n int) rotOp { return rotOp{Update: n} }
	tr := func(n int) rotOp { return rotOp{Trim: n} }
	ones := func(n int) []rotOp { return slices.Repeat([]rotOp{u(1)}, n) }
	cases := []struct {
		name          string
		maxSize, keep int
		ops           []rotOp
	}{
		{"prompt shorter than the window, then decode past it", 8, 0, slices.Concat([]rotOp{u(5)}, ones(12))},
		{"prompt longer than the window, then decode", 8, 0, slices.Concat([]rotOp{u(13)}, ones(10))},
		{"decode from empty", 8, 0, ones(20)},
		{"multi-token update after wrapping", 8, 0, slices.Concat([]rotOp{u(3)}, ones(9), []rotOp{u(4)}, ones(3), []rotOp{u(2), u(11)}, ones(2))},
		{"trims before the window fills", 8, 0, slices.Concat([]rotOp{u(3)}, ones(2), []rotOp{tr(2), u(2), tr(1)}, ones(4), []rotOp{tr(3), u(3)}, ones(3))},
		{"trim refused once positions were evicted", 8, 0, slices.Concat([]rotOp{u(6)}, ones(4), []rotOp{tr(2)}, ones(2))},
		{"attention sinks kept", 8, 2, slices.Concat([]rotOp{u(5)}, ones(9), []rotOp{u(3)}, ones(4))},
		{"window of one", 1, 0, slices.Concat([]rotOp{u(3)}, ones(3))},
	}
	var reqs []map[string]any
	for _, tc := range cases {
		reqs = append(reqs, map[string]any{"max_size": tc.maxSize, "keep": tc.keep, "ops": tc.ops})
	}
	var ref [][]rotStep // one interpreter for all cases: importing MLX dominates otherwise
	testenv.PythonJSON(t, "engines/model/testdata/rotating_reference.py", reqs, &ref)
	if len(ref) != len(cases) {
		t.Fatalf("mlx-lm answered %d scenarios; want %d", len(ref), len(cases))
	}
	w := mlx.NewWorker()
	defer w.Close()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, want := runRotating(t, w, tc.maxSize, tc.keep, tc.ops), ref[i]
			if len(got) != len(want) {
				t.Fatalf("%d steps; mlx-lm %d", len(got), len(want))
			}
			for i := range got {
				g, w := got[i], want[i]
				if g.Offset != w.Offset || g.Trimmed != w.Trimmed || !slices.Equal(g.Keys, w.Keys) || !slices.Equal(g.Values, w.Values) {
					t.Fatalf("step %d (%+v) = %+v; mlx-lm %+v", i, tc.ops[i], g, w)
				}
			}
		})
	}
}

// TestRotatingKVCacheState checks what a wrapped cache keeps: exactly maxSize slots holding the
// last maxSize positions, in rotated order, and a Reset that empties it.
func TestRotatingKVCacheState(t *testing.T) {
	w := mlx.NewWorker()
	defer w.Close()
	err := w.Do(context.Background(), func() error {
		c := NewRotatingKVCache(4, 0)
		defer c.Free()
		s := mlx.NewScope()
		defer s.Close()
		c.Update(positions(0, 6), positions(0, 6))
		if got := len(c.State()); got != 2 {
			return fmt.Errorf("State() has %d arrays after a prefill; want 2", got)
		}
		for p := 6; p < 9; p++ {
			c.Update(positions(p, 1), positions(p, 1))
		}
		if c.Offset() != 9 {
			return fmt.Errorf("Offset() = %d after 9 positions; want 9", c.Offset())
		}
		st := c.State()
		if got := st[0].Shape(); !slices.Equal(got, []int{1, 1, 4, 2}) {
			return fmt.Errorf("keys shape = %v after wrapping; want [1 1 4 2] (bounded by the window)", got)
		}
		keys, err := readPositions(st[0], 0)
		if err != nil {
			return err
		}
		// Positions 6, 7, 8 overwrote slots 0, 1, 2; slot 3 still holds position 5.
		if want := []int{6, 7, 8, 5}; !slices.Equal(keys, want) {
			return fmt.Errorf("stored positions = %v; want %v", keys, want)
		}
		if n := c.Trim(1); n != 0 {
			return fmt.Errorf("Trim(1) on a wrapped cache = %d; want 0 (evicted positions cannot come back)", n)
		}
		c.Reset()
		if c.Offset() != 0 || c.State() != nil {
			return fmt.Errorf("after Reset: offset %d, %d state arrays; want 0 and none", c.Offset(), len(c.State()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
