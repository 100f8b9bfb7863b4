package mlx

/*
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// ints converts Go ints for a shim call; buf avoids an allocation for short lists.
func ints(buf *[8]C.int, xs []int) *C.int {
	if len(xs) == 0 {
		return &buf[0]
	}
	s := buf[:0]
	if len(xs) > len(buf) {
		s = make([]C.int, 0, len(xs))
	}
	for _, x := range xs {
		s = append(s, C.int(x))
	}
	return &s[0]
}

func handle(a Array) C.hp_array { return a.h }

// FromBytes copies raw row-major data of the given dtype and shape into a new array.
func FromBytes(data []byte, dt DType, shape ...int) Array {
	var buf [8]C.int
	var h C.hp_array
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	st := C.hp_array_from_data(&h, p, C.size_t(len(data)), ints(&buf, shape), C.int(len(shape)), C.int(dt))
	return result("from data", st, h)
}

// FromFloat32s copies float32 values into a new array.
func FromFloat32s(data []float32, shape ...int) Array {
	return FromBytes(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(data))), 4*len(data)), Float32, shape...)
}

// FromInt32s copies int32 values into a new array.
func FromInt32s(data []int32, shape ...int) Array {
	return FromBytes(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(data))), 4*len(data)), Int32, shape...)
}

// Scalar makes a 0-d array.
func Scalar(v float64, dt DType) Array {
	var h C.hp_array
	return result("scalar", C.hp_scalar(&h, C.double(v), C.int(dt)), h)
}

func unary(name string, op C.int, a Array) Array {
	if !valid(a) {
		return Array{}
	}
	var h C.hp_array
	return result(name, C.hp_unary(&h, op, a.h), h)
}

func binary(name string, op C.int, a, b Array) Array {
	if !valid(a, b) {
		return Array{}
	}
	var h C.hp_array
	return result(name, C.hp_binary(&h, op, a.h, b.h), h)
}

// Elementwise and linear-algebra ops, with MLX's broadcasting and type promotion.
func Neg(a Array) Array             { return unary("negative", C.HP_NEG, a) }
func Exp(a Array) Array             { return unary("exp", C.HP_EXP, a) }
func Log(a Array) Array             { return unary("log", C.HP_LOG, a) }
func Log1p(a Array) Array           { return unary("log1p", C.HP_LOG1P, a) }
func Sqrt(a Array) Array            { return unary("sqrt", C.HP_SQRT, a) }
func Rsqrt(a Array) Array           { return unary("rsqrt", C.HP_RSQRT, a) }
func Sigmoid(a Array) Array         { return unary("sigmoid", C.HP_SIGMOID, a) }
func Tanh(a Array) Array            { return unary("tanh", C.HP_TANH, a) }
func Square(a Array) Array          { return unary("square", C.HP_SQUARE, a) }
func Abs(a Array) Array             { return unary("abs", C.HP_ABS, a) }
func Sin(a Array) Array             { return unary("sin", C.HP_SIN, a) }
func Cos(a Array) Array             { return unary("cos", C.HP_COS, a) }
func Erf(a Array) Array             { return unary("erf", C.HP_ERF, a) }
func Floor(a Array) Array           { return unary("floor", C.HP_FLOOR, a) }
func LogicalNot(a Array) Array      { return unary("logical_not", C.HP_LOGICAL_NOT, a) }
func Copy(a Array) Array            { return unary("copy", C.HP_COPY, a) }
func Add(a, b Array) Array          { return binary("add", C.HP_ADD, a, b) }
func Sub(a, b Array) Array          { return binary("subtract", C.HP_SUB, a, b) }
func Mul(a, b Array) Array          { return binary("multiply", C.HP_MUL, a, b) }
func Div(a, b Array) Array          { return binary("divide", C.HP_DIV, a, b) }
func Maximum(a, b Array) Array      { return binary("maximum", C.HP_MAXIMUM, a, b) }
func Minimum(a, b Array) Array      { return binary("minimum", C.HP_MINIMUM, a, b) }
func Power(a, b Array) Array        { return binary("power", C.HP_POWER, a, b) }
func Equal(a, b Array) Array        { return binary("equal", C.HP_EQUAL, a, b) }
func Greater(a, b Array) Array      { return binary("greater", C.HP_GREATER, a, b) }
func Less(a, b Array) Array         { return binary("less", C.HP_LESS, a, b) }
func GreaterEqual(a, b Array) Array { return binary("greater_equal", C.HP_GREATER_EQUAL, a, b) }
func LessEqual(a, b Array) Array    { return binary("less_equal", C.HP_LESS_EQUAL, a, b) }
func LogicalAnd(a, b Array) Array   { return binary("logical_and", C.HP_LOGICAL_AND, a, b) }
func Matmul(a, b Array) Array       { return binary("matmul", C.HP_MATMUL, a, b) }

// MulScalar multiplies by a constant of a's own dtype (so bf16 stays bf16).
func MulScalar(a Array, v float64) Array {
	if !valid(a) {
		return Array{}
	}
	return Mul(a, Scalar(v, a.DType()))
}

// AddScalar adds a constant of a's own dtype.
func AddScalar(a Array, v float64) Array {
	if !valid(a) {
		return Array{}
	}
	return Add(a, Scalar(v, a.DType()))
}

func reduce(name string, op C.int, a Array, axes []int, keep bool) Array {
	if !valid(a) {
		return Array{}
	}
	var buf [8]C.int
	var h C.hp_array
	k := C.int(0)
	if keep {
		k = 1
	}
	return result(name, C.hp_reduce(&h, op, a.h, ints(&buf, axes), C.int(len(axes)), k), h)
}

// Reductions over axes (none = all axes).
func Sum(a Array, keep bool, axes ...int) Array  { return reduce("sum", C.HP_SUM, a, axes, keep) }
func Mean(a Array, keep bool, axes ...int) Array { return reduce("mean", C.HP_MEAN, a, axes, keep) }
func Max(a Array, keep bool, axes ...int) Array  { return reduce("max", C.HP_MAX, a, axes, keep) }
func Min(a Array, keep bool, axes ...int) Array  { return reduce("min", C.HP_MIN, a, axes, keep) }
func LogSumExp(a Array, keep bool, axes ...int) Array {
	return reduce("logsumexp", C.HP_LOGSUMEXP, a, axes, keep)
}

// Argmax returns the uint32 indices of the maxima along axis.
func Argmax(a Array, axis int, keep bool) Array {
	return reduce("argmax", C.HP_ARGMAX, a, []int{axis}, keep)
}

// Cumsum is the inclusive cumulative sum along axis.
func Cumsum(a Array, axis int) Array { return reduce("cumsum", C.HP_CUMSUM, a, []int{axis}, false) }

// Reshape returns a with a new shape (one dimension may be -1).
func Reshape(a Array, shape ...int) Array {
	if !valid(a) {
		return Array{}
	}
	var buf [8]C.int
	var h C.hp_array
	return result("reshape", C.hp_reshape(&h, a.h, ints(&buf, shape), C.int(len(shape))), h)
}

// Transpose permutes the axes of a.
func Transpose(a Array, axes ...int) Array {
	if !valid(a) {
		return Array{}
	}
	var buf [8]C.int
	var h C.hp_array
	return result("transpose", C.hp_transpose(&h, a.h, ints(&buf, axes), C.int(len(axes))), h)
}

// AsType converts a to dt (a no-op node when it already has that type).
func AsType(a Array, dt DType) Array {
	if !valid(a) {
		return Array{}
	}
	if a.DType() == dt {
		return a
	}
	var h C.hp_array
	return result("astype", C.hp_astype(&h, a.h, C.int(dt)), h)
}

// View reinterprets a's bytes as dtype dt, without converting them: the last axis scales by the
// ratio of the element sizes (a [1, 2, 64] bf16 array viewed as Uint8 is [1, 2, 128]). MLX copies
// only when a is not contiguous.
func View(a Array, dt DType) Array {
	if !valid(a) {
		return Array{}
	}
	if a.DType() == dt {
		return a
	}
	var h C.hp_array
	return result("view", C.hp_view(&h, a.h, C.int(dt)), h)
}

// Slice returns a[start:stop] along every axis with unit strides.
func Slice(a Array, start, stop []int) Array {
	if !valid(a) {
		return Array{}
	}
	if len(start) != len(stop) {
		return fail(fmt.Errorf("mlx: slice: %d starts, %d stops", len(start), len(stop)))
	}
	var b1, b2, b3 [8]C.int
	strides := make([]int, len(start))
	for i := range strides {
		strides[i] = 1
	}
	var h C.hp_array
	st := C.hp_slice(&h, a.h, ints(&b1, start), ints(&b2, stop), ints(&b3, strides), C.int(len(start)))
	return result("slice", st, h)
}

// SliceUpdate returns src with src[start:stop] replaced by update.
func SliceUpdate(src, update Array, start, stop []int) Array {
	if !valid(src, update) {
		return Array{}
	}
	if len(start) != len(stop) {
		return fail(fmt.Errorf("mlx: slice update: %d starts, %d stops", len(start), len(stop)))
	}
	var b1, b2, b3 [8]C.int
	strides := make([]int, len(start))
	for i := range strides {
		strides[i] = 1
	}
	var h C.hp_array
	st := C.hp_slice_update(&h, src.h, update.h, ints(&b1, start), ints(&b2, stop), ints(&b3, strides), C.int(len(start)))
	return result("slice_update", st, h)
}

func fail(err error) Array {
	if pending == nil {
		pending = err
	}
	return Array{}
}

// Concat joins arrays along axis.
func Concat(axis int, arrs ...Array) Array {
	if !valid(arrs...) || len(arrs) == 0 {
		return fail(fmt.Errorf("mlx: concatenate of %d arrays", len(arrs)))
	}
	hs := make([]C.hp_array, len(arrs))
	for i, a := range arrs {
		hs[i] = a.h
	}
	var h C.hp_array
	return result("concatenate", C.hp_concat(&h, &hs[0], C.int(len(hs)), C.int(axis)), h)
}

// Take gathers a along axis at indices.
func Take(a, indices Array, axis int) Array {
	if !valid(a, indices) {
		return Array{}
	}
	var h C.hp_array
	return result("take", C.hp_take(&h, a.h, indices.h, C.int(axis)), h)
}

// TakeAlongAxis gathers a along axis with indices of matching rank.
func TakeAlongAxis(a, indices Array, axis int) Array {
	if !valid(a, indices) {
		return Array{}
	}
	var h C.hp_array
	return result("take_along_axis", C.hp_take_along_axis(&h, a.h, indices.h, C.int(axis)), h)
}

// Where selects a where cond is true, else b.
func Where(cond, a, b Array) Array {
	if !valid(cond, a, b) {
		return Array{}
	}
	var h C.hp_array
	return result("where", C.hp_where(&h, cond.h, a.h, b.h), h)
}

// Arange is [start, stop) with step.
func Arange(start, stop, step float64, dt DType) Array {
	var h C.hp_array
	return result("arange", C.hp_arange(&h, C.double(start), C.double(stop), C.double(step), C.int(dt)), h)
}

// Full is an array of shape filled with v.
func Full(v float64, dt DType, shape ...int) Array {
	var buf [8]C.int
	var h C.hp_array
	return result("full", C.hp_full(&h, ints(&buf, shape), C.int(len(shape)), C.double(v), C.int(dt)), h)
}

// Softmax along axis; precise computes in float32 for low-precision inputs.
func Softmax(a Array, axis int, precise bool) Array {
	if !valid(a) {
		return Array{}
	}
	p := C.int(0)
	if precise {
		p = 1
	}
	var h C.hp_array
	return result("softmax", C.hp_softmax(&h, a.h, C.int(axis), p), h)
}

// Sort sorts along axis.
func Sort(a Array, axis int) Array {
	if !valid(a) {
		return Array{}
	}
	var h C.hp_array
	return result("sort", C.hp_sort(&h, a.h, C.int(axis), 0), h)
}

// Argsort returns the indices that sort a along axis.
func Argsort(a Array, axis int) Array {
	if !valid(a) {
		return Array{}
	}
	var h C.hp_array
	return result("argsort", C.hp_sort(&h, a.h, C.int(axis), 1), h)
}

// Argpartition returns indices partitioning a around its kth element along axis.
func Argpartition(a Array, kth, axis int) Array {
	if !valid(a) {
		return Array{}
	}
	var h C.hp_array
	return result("argpartition", C.hp_argpartition(&h, a.h, C.int(kth), C.int(axis)), h)
}

// Tril zeroes the elements above the k-th diagonal.
func Tril(a Array, k int) Array {
	if !valid(a) {
		return Array{}
	}
	var h C.hp_array
	return result("tril", C.hp_tril(&h, a.h, C.int(k)), h)
}

// Quantize packs w (last axis a multiple of groupSize) into MLX's affine format: uint32 words,
// per-group scales and biases.
func Quantize(w Array, groupSize, bits int) (wq, scales, biases Array) {
	if !valid(w) {
		return
	}
	var a, b, c C.hp_array
	if C.hp_quantize(&a, &b, &c, w.h, C.int(groupSize), C.int(bits)) != 0 {
		fail(lastError("quantize"))
		return
	}
	return track(a), track(b), track(c)
}

// Dequantize unpacks an affine-quantized matrix to dt.
func Dequantize(wq, scales, biases Array, groupSize, bits int, dt DType) Array {
	if !valid(wq, scales, biases) {
		return Array{}
	}
	var h C.hp_array
	return result("dequantize", C.hp_dequantize(&h, wq.h, scales.h, biases.h, C.int(groupSize), C.int(bits), C.int(dt)), h)
}

// QuantizedMatmul computes x @ dequantize(w).T (transpose true) without materialising w.
func QuantizedMatmul(x, wq, scales, biases Array, transpose bool, groupSize, bits int) Array {
	if !valid(x, wq, scales, biases) {
		return Array{}
	}
	t := C.int(0)
	if transpose {
		t = 1
	}
	var h C.hp_array
	st := C.hp_quantized_matmul(&h, x.h, wq.h, scales.h, biases.h, t, C.int(groupSize), C.int(bits))
	return result("quantized_matmul", st, h)
}

// RMSNorm is x / rms(x) * weight over the last axis (weight may be invalid: no scaling).
func RMSNorm(x, weight Array, eps float32) Array {
	if !valid(x) {
		return Array{}
	}
	var h C.hp_array
	return result("rms_norm", C.hp_rms_norm(&h, x.h, weight.h, C.float(eps)), h)
}

// RoPE rotates the first dims features of x ([..., seq, dim]) for positions offset.. . When freqs
// is valid it gives the inverse frequencies (and base is ignored), as Llama 3 scaling needs.
func RoPE(x Array, dims int, traditional bool, base, scale float32, offset int, freqs Array) Array {
	if !valid(x) {
		return Array{}
	}
	t := C.int(0)
	if traditional {
		t = 1
	}
	var h C.hp_array
	st := C.hp_rope(&h, x.h, C.int(dims), t, C.float(base), C.float(scale), C.int(offset), freqs.h)
	return result("rope", st, h)
}

// RoPEOffsets is RoPE with one offset per batch row: offsets is int32 [B] and x is [B, ..., seq,
// dim], row b rotated for positions offsets[b]... .
func RoPEOffsets(x Array, dims int, traditional bool, base, scale float32, offsets, freqs Array) Array {
	if !valid(x, offsets) {
		return Array{}
	}
	t := C.int(0)
	if traditional {
		t = 1
	}
	var h C.hp_array
	st := C.hp_rope_offsets(&h, x.h, C.int(dims), t, C.float(base), C.float(scale), offsets.h, freqs.h)
	return result("rope", st, h)
}

// Mask modes for SDPA.
const (
	MaskNone   = ""
	MaskCausal = "causal"
	MaskArray  = "array"
)

var maskModes = map[string]*C.char{
	MaskNone:   C.CString(MaskNone),
	MaskCausal: C.CString(MaskCausal),
	MaskArray:  C.CString(MaskArray),
}

// SDPA is softmax(q k^T * scale + mask) v with grouped-query broadcasting; q, k, v are
// [batch, heads, seq, dim]. mask is used when mode is MaskArray (additive float or boolean).
func SDPA(q, k, v Array, scale float32, mode string, mask Array) Array {
	if !valid(q, k, v) {
		return Array{}
	}
	m, ok := maskModes[mode]
	if !ok {
		return fail(fmt.Errorf("mlx: sdpa: unknown mask mode %q", mode))
	}
	var h C.hp_array
	return result("sdpa", C.hp_sdpa(&h, q.h, k.h, v.h, C.float(scale), m, mask.h), h)
}

// RandomKey makes a PRNG key from a seed.
func RandomKey(seed uint64) Array {
	var h C.hp_array
	return result("random key", C.hp_random_key(&h, C.uint64_t(seed)), h)
}

// RandomSplit splits a key into two independent keys.
func RandomSplit(key Array) (Array, Array) {
	if !valid(key) {
		return Array{}, Array{}
	}
	var a, b C.hp_array
	if C.hp_random_split(&a, &b, key.h) != 0 {
		fail(lastError("random split"))
		return Array{}, Array{}
	}
	return track(a), track(b)
}

// Categorical samples indices from unnormalised log-probabilities along axis.
func Categorical(logits Array, axis int, key Array) Array {
	if !valid(logits) {
		return Array{}
	}
	var h C.hp_array
	return result("categorical", C.hp_random_categorical(&h, logits.h, C.int(axis), key.h), h)
}

// Uniform samples [0, 1) of the given shape.
func Uniform(key Array, dt DType, shape ...int) Array {
	var buf [8]C.int
	var h C.hp_array
	return result("uniform", C.hp_random_uniform(&h, ints(&buf, shape), C.int(len(shape)), C.int(dt), key.h), h)
}

// Normal samples N(0, scale^2) of the given shape.
func Normal(key Array, dt DType, scale float32, shape ...int) Array {
	var buf [8]C.int
	var h C.hp_array
	st := C.hp_random_normal(&h, ints(&buf, shape), C.int(len(shape)), C.int(dt), C.float(scale), key.h)
	return result("normal", st, h)
}

func compiled(name string, fn C.int, arrs ...Array) Array {
	if !valid(arrs...) {
		return Array{}
	}
	var buf [4]C.hp_array
	hs := buf[:0]
	for _, a := range arrs {
		hs = append(hs, a.h)
	}
	var h C.hp_array
	return result(name, C.hp_compiled(&h, fn, &hs[0], C.int(len(hs))), h)
}

// SwiGLU is silu(gate) * x as one fused kernel (mlx-lm's compiled swiglu).
func SwiGLU(gate, x Array) Array { return compiled("swiglu", C.HP_FN_SWIGLU, gate, x) }

// GeluApprox is the tanh approximation of GELU as one fused kernel (mlx.nn.gelu_approx).
func GeluApprox(x Array) Array { return compiled("gelu_approx", C.HP_FN_GELU_APPROX, x) }

// ClipResidual is x + y, computed in float32 and clipped to the float16 range when x is float16.
func ClipResidual(x, y Array) Array { return compiled("clip_residual", C.HP_FN_CLIP_RESIDUAL, x, y) }
