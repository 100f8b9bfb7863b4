package engines

import (
	"context"
	"sync"

	"github.com/hippo-bench/hippo/engines/mlx"
)

var device = sync.OnceValues(func() (mlx.Device, error) {
	w := mlx.NewWorker()
	defer w.Close()
	var d mlx.Device
	err := w.Do(context.Background(), func() error {
		var err error
		d, err = mlx.DefaultDevice()
		return err
	})
	return d, err
})

// Device is the device MLX computes on in this process: the GPU when the linked MLX has a GPU
// backend (Metal, CUDA) and finds a device, otherwise the CPU. It is asked once.
func Device() (mlx.Device, error) { return device() }

// DefaultDType is the fastest compute dtype on Device: bfloat16 on a GPU (half the bytes a
// decode step reads, at full speed), float32 on the CPU backend (BLAS runs float32 only; bf16
// and f16 matmuls run scalar loops there, 3-10x slower). If the device cannot be asked, it
// assumes the CPU.
func DefaultDType() string {
	if d, err := Device(); err == nil && d.GPU {
		return "bf16"
	}
	return "f32"
}
