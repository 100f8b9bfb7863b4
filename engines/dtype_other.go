//go:build !darwin

package engines

// On the CPU backend only float32 matmuls go through BLAS.
const defaultDType = "f32"
