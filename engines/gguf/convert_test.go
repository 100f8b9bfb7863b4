package gguf

import (
	"context"
	"testing"

	"github.com/hippo-bench/hippo/engines/mlx"
)

// TestUnpermuteInvertsLlamaCpp checks unpermute against llama.cpp's converter, which for Q and K
// does weights.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(weights.shape):
// written here with plain index arithmetic, then undone by unpermute on MLX.
func TestUnpermuteInvertsLlamaCpp(t *testing.T) {
	for _, tc := range []struct{ heads, headDim, cols int }{{9, 64, 3}, {3, 64, 1}, {2, 8, 5}} {
		rows := tc.heads * tc.headDim
		hf := make([]int32, rows*tc.cols)
		for i := range hf {
			hf[i] = int32(i)
		}
		// llama.cpp: GGUF row h*D + 2*i + s holds Hugging Face row h*D + s*D/2 + i.
		gg := make([]int32, len(hf))
		half := tc.headDim / 2
		for h := 0; h < tc.heads; h++ {
			for s := 0; s < 2; s++ {
				for i := 0; i < half; i++ {
					src, dst := h*tc.headDim+s*half+i, h*tc.headDim+2*i+s
					copy(gg[dst*tc.cols:(dst+1)*tc.cols], hf[src*tc.cols:(src+1)*tc.cols])
				}
			}
		}
		w := mlx.NewWorker()
		var got []int32
		err := w.Do(context.Background(), func() error {
			s := mlx.NewScope()
			defer s.Close()
			var err error
			got, err = unpermute(mlx.FromInt32s(gg, rows, tc.cols), tc.heads).Int32s()
			return err
		})
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i := range hf {
			if got[i] != hf[i] {
				t.Fatalf("heads %d, head_dim %d: element %d = %d; want %d (the Hugging Face order)", tc.heads, tc.headDim, i, got[i], hf[i])
			}
		}
	}
}
