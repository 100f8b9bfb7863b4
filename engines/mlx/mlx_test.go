package mlx

import (
	"bytes"
	"context"
	"math"
	"slices"
	"strings"
	"testing"
)

func onWorker(t *testing.T, fn func() error) {
	t.Helper()
	w := NewWorker()
	defer w.Close()
	if err := w.Do(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

func TestMatmulAndRead(t *testing.T) {
	onWorker(t, func() error {
		s := NewScope()
		defer s.Close()
		a := FromFloat32s([]float32{1, 2, 3, 4}, 2, 2)
		b := FromFloat32s([]float32{5, 6, 7, 8}, 2, 2)
		got, err := Matmul(a, b).Float32s()
		if err != nil {
			return err
		}
		want := []float32{19, 22, 43, 50}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("Matmul = %v; want %v", got, want)
				break
			}
		}
		return nil
	})
}

func TestErrorsAreStickyAndReported(t *testing.T) {
	onWorker(t, func() error {
		s := NewScope()
		a := FromFloat32s([]float32{1, 2, 3}, 3)
		b := FromFloat32s([]float32{1, 2}, 2)
		c := Add(a, b) // shapes do not broadcast
		if c.Valid() {
			t.Errorf("Add of [3] and [2] is valid; want an invalid array")
		}
		d := Exp(c) // must not reach MLX
		if d.Valid() {
			t.Errorf("Exp of an invalid array is valid")
		}
		err := s.Close()
		if err == nil || !strings.Contains(err.Error(), "mlx: add") {
			t.Errorf("Close() = %v; want an mlx: add error", err)
		}
		if err := Check(); err != nil {
			t.Errorf("Check after Close = %v; want nil (error consumed)", err)
		}
		return nil
	})
}

func TestBadDataSize(t *testing.T) {
	onWorker(t, func() error {
		a := FromBytes(make([]byte, 7), Float32, 2)
		if a.Valid() {
			t.Errorf("FromBytes(7 bytes, f32 [2]) valid; want error")
		}
		if err := Check(); err == nil || !strings.Contains(err.Error(), "7 bytes") {
			t.Errorf("error = %v; want mention of 7 bytes", err)
		}
		return nil
	})
}

func TestScopeKeep(t *testing.T) {
	onWorker(t, func() error {
		s := NewScope()
		x := MulScalar(FromFloat32s([]float32{1, 2}, 2), 3)
		s.Keep(x)
		if err := s.Close(); err != nil {
			return err
		}
		defer x.Free()
		got, err := x.Float32s()
		if err != nil {
			return err
		}
		if got[0] != 3 || got[1] != 6 {
			t.Errorf("kept array = %v; want [3 6]", got)
		}
		return nil
	})
}

func TestQuantizeRoundTrip(t *testing.T) {
	onWorker(t, func() error {
		s := NewScope()
		defer s.Close()
		w := Normal(RandomKey(1), Float32, 1, 8, 64)
		wq, sc, bi := Quantize(w, 64, 8)
		back := Dequantize(wq, sc, bi, 64, 8, Float32)
		diff, err := Max(Abs(Sub(back, w)), false).Float32s()
		if err != nil {
			return err
		}
		if diff[0] > 0.05 {
			t.Errorf("8-bit round trip max error %v; want < 0.05", diff[0])
		}
		x := Normal(RandomKey(2), Float32, 1, 1, 64)
		y1, err := QuantizedMatmul(x, wq, sc, bi, true, 64, 8).Float32s()
		if err != nil {
			return err
		}
		y2, err := Matmul(x, Transpose(back, 1, 0)).Float32s()
		if err != nil {
			return err
		}
		for i := range y1 {
			if math.Abs(float64(y1[i]-y2[i])) > 1e-3 {
				t.Errorf("quantized_matmul[%d] = %v; dequantized matmul %v", i, y1[i], y2[i])
			}
		}
		return nil
	})
}

func TestWorkerRecoversPanic(t *testing.T) {
	w := NewWorker()
	defer w.Close()
	err := w.Do(context.Background(), func() error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("Do(panic) = %v; want error mentioning boom", err)
	}
}

func TestViewReinterpretsBytes(t *testing.T) {
	onWorker(t, func() error {
		s := NewScope()
		defer s.Close()
		x := FromFloat32s([]float32{1, -2, 0.5, 3}, 1, 2, 2)
		b := View(x, Uint8)
		if got := b.Shape(); !slices.Equal(got, []int{1, 2, 8}) {
			t.Errorf("View(f32 [1 2 2], uint8) shape %v; want [1 2 8]", got)
		}
		raw, err := b.Bytes()
		if err != nil {
			return err
		}
		want, err := x.Bytes()
		if err != nil {
			return err
		}
		if !bytes.Equal(raw, want) {
			t.Errorf("viewed bytes %v; want the array's own %v", raw, want)
		}
		back, err := Reshape(View(Reshape(b, 16), Float32), 1, 2, 2).Float32s()
		if err != nil {
			return err
		}
		if !slices.Equal(back, []float32{1, -2, 0.5, 3}) {
			t.Errorf("viewed back %v; want [1 -2 0.5 3]", back)
		}
		return nil
	})
}

// TestReadDoesNotWaitForLaterWork holds what pipelined decoding relies on: reading an array that
// is already enqueued waits for that array only, not for work enqueued after it on the same
// stream (a read that queued an op of its own would return only after the later work).
func TestReadDoesNotWaitForLaterWork(t *testing.T) {
	onWorker(t, func() error {
		s := NewScope()
		defer s.Close()
		first := AsType(Argmax(FromFloat32s([]float32{1, 5, 2}, 1, 3), -1, false), Int32)
		if err := AsyncEval(first); err != nil {
			return err
		}
		// Half a second of matrix products on an idle 2-core CPU, enqueued behind first (few enough ops
		// that AsyncEval does not wait for the stream to drain).
		w := Full(1.0/768, Float32, 768, 768)
		later := Full(1, Float32, 768, 768)
		for range 40 {
			later = Matmul(later, w)
		}
		if err := AsyncEval(later); err != nil {
			return err
		}
		id, err := first.Item()
		if err != nil {
			return err
		}
		if id != 1 {
			t.Errorf("Item() = %d; want 1", id)
		}
		if later.Ready() {
			t.Errorf("the work enqueued after the read array was done when the read returned; want the read to return first")
		}
		if err := Eval(later); err != nil {
			return err
		}
		if !later.Ready() {
			t.Errorf("Ready() = false after Eval; want true")
		}
		return nil
	})
}

// TestReadNonContiguous covers the reads that still need a copy: views whose elements are not in
// row-major order once evaluated.
func TestReadNonContiguous(t *testing.T) {
	tests := []struct {
		name string
		view func(m Array) Array
		want []float32
	}{
		{"transpose", func(m Array) Array { return Transpose(m, 1, 0) }, []float32{1, 4, 2, 5, 3, 6}},
		{"broadcast", func(Array) Array { return Full(7, Float32, 2, 2) }, []float32{7, 7, 7, 7}},
		{"column slice", func(m Array) Array { return Slice(m, []int{0, 1}, []int{2, 3}) }, []float32{2, 3, 5, 6}},
		{"row slice", func(m Array) Array { return Slice(m, []int{1, 0}, []int{2, 3}) }, []float32{4, 5, 6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			onWorker(t, func() error { // MLX calls stay on the worker's thread
				s := NewScope()
				defer s.Close()
				got, err := tc.view(FromFloat32s([]float32{1, 2, 3, 4, 5, 6}, 2, 3)).Float32s()
				if err != nil {
					return err
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("Float32s() = %v; want %v", got, tc.want)
				}
				return nil
			})
		})
	}
}
