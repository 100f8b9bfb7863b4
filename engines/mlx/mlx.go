// Package mlx is Hippo's only cgo package: Go arrays, ops and evaluation over MLX's C++ API,
// through the project's own small C shim (shim.h, shim.cpp).
//
// Rules of use:
//   - All calls must run on one OS thread: MLX gives every thread its own default stream, so use a
//     Worker and do MLX work inside Worker.Do.
//   - MLX is lazy. An op only records a node in a graph; nothing is computed until Eval (or a read
//     such as Float32s). Time work only after evaluating its result.
//   - Every Array owns a native handle. Arrays created while a Scope is open belong to that scope and
//     are freed by Scope.Close unless moved out with Scope.Keep; arrays created with no scope open
//     belong to the caller, who frees them with Free. Freeing a handle never invalidates graphs
//     that use it: MLX keeps its own references.
//   - Errors are sticky, like bufio.Scanner: a failing op records the error and returns an invalid
//     Array; ops on invalid arrays do nothing. Eval, Check and Scope.Close report the first error.
package mlx

/*
#cgo CXXFLAGS: -std=c++20 -O2 -I${SRCDIR}/../../.mlx/include
#cgo linux,!cuda LDFLAGS: -Wl,--no-as-needed -lopenblas
#cgo LDFLAGS: -L${SRCDIR}/../../.mlx/lib -lmlx -Wl,-rpath,${SRCDIR}/../../.mlx/lib -lstdc++
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// The linux LDFLAGS put OpenBLAS ahead of libmlx.so in the link: the PyPI mlx-cpu wheel bundles the
// reference BLAS, and ELF symbol lookup then resolves MLX's cblas_* calls to OpenBLAS (about 70x
// faster for prefill matmuls on the 2-core x86 machines we measured, 2x for decode matvecs).
//
// Built with the cuda tag (`HIPPO_BACKEND=cuda just setup` makes just pass it), .mlx is the
// mlx-cuda-13 wheel instead: the same C++ API, matmuls on the GPU through cuBLAS, and no OpenBLAS
// in the link. Its libmlx.so finds the CUDA runtime libraries through its own RPATH
// ($ORIGIN/../../nvidia/...: the nvidia-* packages beside it in the venv).

// DType is an array element type.
type DType int

// Element types, numbered as in shim.h.
const (
	Bool     DType = C.HP_BOOL
	Uint8    DType = C.HP_UINT8
	Uint16   DType = C.HP_UINT16
	Uint32   DType = C.HP_UINT32
	Uint64   DType = C.HP_UINT64
	Int8     DType = C.HP_INT8
	Int16    DType = C.HP_INT16
	Int32    DType = C.HP_INT32
	Int64    DType = C.HP_INT64
	Float16  DType = C.HP_FLOAT16
	BFloat16 DType = C.HP_BFLOAT16
	Float32  DType = C.HP_FLOAT32
)

var dtypeInfo = map[DType]struct {
	name string
	size int
}{
	Bool: {"bool", 1}, Uint8: {"uint8", 1}, Uint16: {"uint16", 2}, Uint32: {"uint32", 4},
	Uint64: {"uint64", 8}, Int8: {"int8", 1}, Int16: {"int16", 2}, Int32: {"int32", 4},
	Int64: {"int64", 8}, Float16: {"float16", 2}, BFloat16: {"bfloat16", 2}, Float32: {"float32", 4},
}

// String returns the MLX name of the type.
func (d DType) String() string {
	if i, ok := dtypeInfo[d]; ok {
		return i.name
	}
	return fmt.Sprintf("dtype(%d)", int(d))
}

// Size is the size of one element in bytes.
func (d DType) Size() int { return dtypeInfo[d].size }

// ParseDType accepts the short names used on Hippo's command line (f32, bf16, f16) and MLX's names.
func ParseDType(s string) (DType, error) {
	switch s {
	case "f32", "float32":
		return Float32, nil
	case "bf16", "bfloat16":
		return BFloat16, nil
	case "f16", "float16":
		return Float16, nil
	}
	return 0, fmt.Errorf("mlx: unknown compute dtype %q: use f32, bf16 or f16", s)
}

// Array is a handle to a native MLX array. The zero Array is invalid.
type Array struct{ h C.hp_array }

// Valid reports whether a holds a native array.
func (a Array) Valid() bool { return a.h != nil }

// Free releases the handle. It is a no-op on an invalid Array. Do not free an Array that a Scope
// still owns.
func (a Array) Free() {
	if a.h != nil {
		C.hp_array_free(a.h)
	}
}

// Scope collects the arrays created while it is the innermost open scope, so that a model forward
// can free all its intermediates at once. Scopes nest and must be closed in reverse order, on the
// MLX thread.
type Scope struct {
	arrays []C.hp_array
}

var (
	scopes  []*Scope
	pending error
)

// NewScope opens a scope; close it with Close.
func NewScope() *Scope {
	s := &Scope{arrays: make([]C.hp_array, 0, 256)}
	scopes = append(scopes, s)
	return s
}

// Keep moves arrays out of the scope: the caller owns them from now on and frees them with Free.
func (s *Scope) Keep(arrs ...Array) {
	for _, a := range arrs {
		if a.h == nil {
			continue
		}
		for i := len(s.arrays) - 1; i >= 0; i-- {
			if s.arrays[i] == a.h {
				s.arrays[i] = nil
				break
			}
		}
	}
}

// Detach moves arrays out of whichever open scope owns them: the caller owns them from now on.
func Detach(arrs ...Array) {
	for i := len(scopes) - 1; i >= 0; i-- {
		scopes[i].Keep(arrs...)
	}
}

// Close frees every array the scope still owns and returns the first error recorded since the
// last Check, Eval or Close.
func (s *Scope) Close() error {
	for _, h := range s.arrays {
		if h != nil {
			C.hp_array_free(h)
		}
	}
	s.arrays = nil
	if n := len(scopes); n > 0 && scopes[n-1] == s {
		scopes = scopes[:n-1]
	}
	return Check()
}

// Check returns and clears the first error recorded by an op since the last Check.
func Check() error {
	err := pending
	pending = nil
	return err
}

func track(h C.hp_array) Array {
	if n := len(scopes); n > 0 {
		scopes[n-1].arrays = append(scopes[n-1].arrays, h)
	}
	return Array{h}
}

func lastError(op string) error {
	return fmt.Errorf("mlx: %s: %s", op, C.GoString(C.hp_last_error()))
}

// result turns a shim status into an Array, recording the first failure.
func result(op string, status C.int, h C.hp_array) Array {
	if status != 0 {
		if pending == nil {
			pending = lastError(op)
		}
		return Array{}
	}
	return track(h)
}

func valid(arrs ...Array) bool {
	for _, a := range arrs {
		if a.h == nil {
			if pending == nil {
				pending = errors.New("mlx: op on an invalid array (an earlier op failed or the array was never set)")
			}
			return false
		}
	}
	return true
}

// Version is the MLX library version.
func Version() string { return C.GoString(C.hp_version()) }

// UseCPU makes the CPU the default device of the calling thread.
func UseCPU() error {
	if C.hp_use_cpu() != 0 {
		return lastError("use cpu")
	}
	return nil
}

// Device is an MLX device.
type Device struct {
	// GPU is false for the CPU backend.
	GPU bool
	// Name is the backend's name for the device (the GPU's model); empty on the CPU.
	Name string
}

// String describes the device, e.g. "gpu (NVIDIA H100 80GB HBM3)" or "cpu".
func (d Device) String() string {
	s := "cpu"
	if d.GPU {
		s = "gpu"
	}
	if d.Name != "" {
		s += " (" + d.Name + ")"
	}
	return s
}

// DefaultDevice is the calling thread's default device: the GPU when this build's MLX has a GPU
// backend (Metal, CUDA) and a device is present, otherwise the CPU.
func DefaultDevice() (Device, error) {
	var kind C.int
	var buf [256]C.char
	if C.hp_default_device(&kind, &buf[0], C.size_t(len(buf))) != 0 {
		return Device{}, lastError("default device")
	}
	return Device{GPU: kind == 1, Name: C.GoString(&buf[0])}, nil
}

// Syncs counts the points where the host waited for MLX, since the process started: blocking
// evaluations (Eval) and reads of array data into host memory (Bytes, Float32s, Int32s, Item).
// Asynchronous evaluations are not synchronisations. Take the difference of two calls to count
// a span of work.
type Syncs struct {
	Evals, Reads int64
}

// Total is Evals + Reads.
func (s Syncs) Total() int64 { return s.Evals + s.Reads }

// Add is s + t, field by field.
func (s Syncs) Add(t Syncs) Syncs { return Syncs{s.Evals + t.Evals, s.Reads + t.Reads} }

// Sub is s - t, field by field.
func (s Syncs) Sub(t Syncs) Syncs { return Syncs{s.Evals - t.Evals, s.Reads - t.Reads} }

var syncEvals, syncReads atomic.Int64

// SyncCount returns the synchronisations so far (see Syncs).
func SyncCount() Syncs { return Syncs{syncEvals.Load(), syncReads.Load()} }

// read copies a's data to dst, counting one host read.
func read(a Array, dst unsafe.Pointer, n int) error {
	syncReads.Add(1)
	if C.hp_array_read(a.h, dst, C.size_t(n)) != 0 {
		return lastError("read")
	}
	return nil
}

// Ndim is the number of dimensions.
func (a Array) Ndim() int { return int(C.hp_array_ndim(a.h)) }

// Shape returns the dimensions.
func (a Array) Shape() []int {
	n := a.Ndim()
	if n == 0 {
		return []int{}
	}
	var buf [16]C.int
	dims := buf[:]
	if n > len(buf) {
		dims = make([]C.int, n)
	}
	C.hp_array_shape(a.h, &dims[0])
	out := make([]int, n)
	for i := range out {
		out[i] = int(dims[i])
	}
	return out
}

// Dim returns dimension i (negative counts from the end).
func (a Array) Dim(i int) int {
	s := a.Shape()
	if i < 0 {
		i += len(s)
	}
	return s[i]
}

// DType is the element type.
func (a Array) DType() DType { return DType(C.hp_array_dtype(a.h)) }

// NBytes is the size of the array's data in bytes.
func (a Array) NBytes() int { return int(C.hp_array_nbytes(a.h)) }

// Size is the number of elements.
func (a Array) Size() int {
	n := 1
	for _, d := range a.Shape() {
		n *= d
	}
	return n
}

// Bytes evaluates a and returns a copy of its data in row-major order.
func (a Array) Bytes() ([]byte, error) {
	if !valid(a) {
		return nil, Check()
	}
	out := make([]byte, a.NBytes())
	var p unsafe.Pointer
	if len(out) > 0 {
		p = unsafe.Pointer(&out[0])
	}
	if err := read(a, p, len(out)); err != nil {
		return nil, err
	}
	return out, nil
}

// Float32s evaluates a float32 array and returns its elements.
func (a Array) Float32s() ([]float32, error) {
	if !valid(a) {
		return nil, Check()
	}
	if a.DType() != Float32 {
		return nil, fmt.Errorf("mlx: Float32s on a %s array", a.DType())
	}
	out := make([]float32, a.Size())
	if len(out) == 0 {
		return out, nil
	}
	if err := read(a, unsafe.Pointer(&out[0]), 4*len(out)); err != nil {
		return nil, err
	}
	return out, nil
}

// Int32s evaluates an int32 or uint32 array and returns its elements.
func (a Array) Int32s() ([]int32, error) {
	if !valid(a) {
		return nil, Check()
	}
	if dt := a.DType(); dt != Int32 && dt != Uint32 {
		return nil, fmt.Errorf("mlx: Int32s on a %s array", dt)
	}
	out := make([]int32, a.Size())
	if len(out) == 0 {
		return out, nil
	}
	if err := read(a, unsafe.Pointer(&out[0]), 4*len(out)); err != nil {
		return nil, err
	}
	return out, nil
}

// Ready reports whether a's value is computed: false while it is unevaluated, or enqueued by
// AsyncEval and still running. It never waits.
func (a Array) Ready() bool { return a.h != nil && C.hp_array_ready(a.h) != 0 }

// Item reads the one element of an int32 or uint32 array of size 1 (any shape): the single host
// read a decode step needs to learn its token.
func (a Array) Item() (int, error) {
	if !valid(a) {
		return 0, Check()
	}
	if dt := a.DType(); dt != Int32 && dt != Uint32 {
		return 0, fmt.Errorf("mlx: Item on a %s array", dt)
	}
	if n := a.Size(); n != 1 {
		return 0, fmt.Errorf("mlx: Item on an array of %d elements", n)
	}
	var v int32
	if err := read(a, unsafe.Pointer(&v), 4); err != nil {
		return 0, err
	}
	if a.DType() == Uint32 {
		return int(uint32(v)), nil
	}
	return int(v), nil
}

// Eval computes arrays (and everything they depend on). It returns the first error recorded by
// earlier ops, if any.
func Eval(arrs ...Array) error {
	if err := Check(); err != nil {
		return err
	}
	return evalWith(arrs, false)
}

// AsyncEval starts computing arrays without waiting; a later Eval or read waits for them.
func AsyncEval(arrs ...Array) error {
	if err := Check(); err != nil {
		return err
	}
	return evalWith(arrs, true)
}

func evalWith(arrs []Array, async bool) error {
	if len(arrs) == 0 {
		return nil
	}
	var buf [8]C.hp_array
	hs := buf[:0]
	for _, a := range arrs {
		if !valid(a) {
			return Check()
		}
		hs = append(hs, a.h)
	}
	// hs holds C pointers only, so passing its backing array to C is allowed.
	p := &hs[0]
	var st C.int
	if async {
		st = C.hp_async_eval(p, C.int(len(hs)))
	} else {
		syncEvals.Add(1)
		st = C.hp_eval(p, C.int(len(hs)))
	}
	if st != 0 {
		return lastError("eval")
	}
	return nil
}

// Memory reports MLX's allocator: bytes in live arrays, the peak since the last reset, and bytes
// held in its buffer cache.
func Memory() (active, peak, cache int64) {
	return int64(C.hp_active_memory()), int64(C.hp_peak_memory()), int64(C.hp_cache_memory())
}

// ResetPeakMemory restarts peak tracking.
func ResetPeakMemory() { C.hp_reset_peak_memory() }

// ClearCache returns MLX's cached buffers to the system.
func ClearCache() { C.hp_clear_cache() }
