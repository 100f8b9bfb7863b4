// A small C API over MLX's C++ API, owned by Hippo (mlx-c is not available here).
//
// Conventions, in the spirit of mlx-c: every array is an opaque owning handle that the caller frees
// with hp_array_free; every call returns 0 on success and nonzero on failure, in which case
// hp_last_error() returns the message (thread-local, valid until the next failing call on the same
// thread). No C++ exception ever crosses this boundary and nothing here exits the process.
#ifndef HIPPO_MLX_SHIM_H
#define HIPPO_MLX_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hp_array_s* hp_array;

// Dtype codes: stable numbers used by the Go side.
enum {
  HP_BOOL = 0,
  HP_UINT8 = 1,
  HP_UINT32 = 2,
  HP_INT32 = 3,
  HP_INT64 = 4,
  HP_FLOAT16 = 5,
  HP_BFLOAT16 = 6,
  HP_FLOAT32 = 7,
  HP_INT8 = 8,
  HP_UINT16 = 9,
  HP_INT16 = 10,
  HP_UINT64 = 11,
};

enum {
  HP_NEG, HP_EXP, HP_LOG, HP_SQRT, HP_RSQRT, HP_SIGMOID, HP_TANH, HP_SQUARE, HP_ABS,
  HP_SIN, HP_COS, HP_ERF, HP_FLOOR, HP_LOGICAL_NOT, HP_COPY, HP_LOG1P,
};

enum {
  HP_ADD, HP_SUB, HP_MUL, HP_DIV, HP_MAXIMUM, HP_MINIMUM, HP_POWER, HP_EQUAL, HP_GREATER,
  HP_LESS, HP_GREATER_EQUAL, HP_LESS_EQUAL, HP_LOGICAL_AND, HP_MATMUL,
};

enum { HP_SUM, HP_MEAN, HP_MAX, HP_MIN, HP_LOGSUMEXP, HP_ARGMAX, HP_ARGMIN, HP_CUMSUM };

const char* hp_last_error(void);
const char* hp_version(void);
// hp_use_cpu makes the CPU the default device of this thread (tests, or forcing CPU on a Mac).
int hp_use_cpu(void);
// hp_default_device writes the calling thread's default device: its kind (0 cpu, 1 gpu) and, when
// the backend names it, the device's name into name (at most n bytes, NUL-terminated).
int hp_default_device(int* kind, char* name, size_t n);

void hp_array_free(hp_array a);
// hp_array_from_data copies nbytes from data into a new array of the given shape and dtype.
int hp_array_from_data(hp_array* out, const void* data, size_t nbytes, const int* shape, int ndim, int dtype);
int hp_scalar(hp_array* out, double v, int dtype);
int hp_array_ndim(hp_array a);
int hp_array_shape(hp_array a, int* shape);  // writes ndim entries
int hp_array_dtype(hp_array a);
size_t hp_array_nbytes(hp_array a);
// hp_array_read evaluates a (waiting for it if already enqueued), copies it to row-major order if
// it is not, and copies its bytes to dst (nbytes must match).
int hp_array_read(hp_array a, void* dst, size_t nbytes);
// hp_array_ready reports whether a's value is computed (1) or not yet (0: unevaluated, or
// enqueued and still running). It never waits.
int hp_array_ready(hp_array a);

int hp_eval(const hp_array* arrs, int n);
int hp_async_eval(const hp_array* arrs, int n);

int hp_unary(hp_array* out, int op, hp_array a);
int hp_binary(hp_array* out, int op, hp_array a, hp_array b);
// hp_reduce reduces over axes (naxes 0 = all); ARGMAX/ARGMIN/CUMSUM use axes[0] only.
int hp_reduce(hp_array* out, int op, hp_array a, const int* axes, int naxes, int keepdims);
int hp_reshape(hp_array* out, hp_array a, const int* shape, int ndim);
int hp_transpose(hp_array* out, hp_array a, const int* axes, int naxes);
int hp_astype(hp_array* out, hp_array a, int dtype);
int hp_view(hp_array* out, hp_array a, int dtype);
int hp_slice(hp_array* out, hp_array a, const int* start, const int* stop, const int* strides, int n);
int hp_slice_update(hp_array* out, hp_array src, hp_array update, const int* start, const int* stop, const int* strides, int n);
int hp_concat(hp_array* out, const hp_array* arrs, int n, int axis);
int hp_take(hp_array* out, hp_array a, hp_array indices, int axis);
int hp_take_along_axis(hp_array* out, hp_array a, hp_array indices, int axis);
int hp_where(hp_array* out, hp_array cond, hp_array a, hp_array b);
int hp_arange(hp_array* out, double start, double stop, double step, int dtype);
int hp_full(hp_array* out, const int* shape, int ndim, double v, int dtype);
int hp_softmax(hp_array* out, hp_array a, int axis, int precise);
int hp_sort(hp_array* out, hp_array a, int axis, int arg);
int hp_argpartition(hp_array* out, hp_array a, int kth, int axis);
int hp_tril(hp_array* out, hp_array a, int k);

int hp_quantize(hp_array* wq, hp_array* scales, hp_array* biases, hp_array w, int group_size, int bits);
int hp_dequantize(hp_array* out, hp_array wq, hp_array scales, hp_array biases, int group_size, int bits, int dtype);
int hp_quantized_matmul(hp_array* out, hp_array x, hp_array wq, hp_array scales, hp_array biases, int transpose, int group_size, int bits);

// Fused ops from mlx::core::fast (composed ops on the CPU backend). weight, freqs and mask may be NULL.
int hp_rms_norm(hp_array* out, hp_array x, hp_array weight, float eps);
int hp_rope(hp_array* out, hp_array x, int dims, int traditional, float base, float scale, int offset, hp_array freqs);
int hp_rope_offsets(hp_array* out, hp_array x, int dims, int traditional, float base, float scale, hp_array offsets, hp_array freqs);
// mask_mode is "", "causal" or "array" (then mask is used).
int hp_sdpa(hp_array* out, hp_array q, hp_array k, hp_array v, float scale, const char* mask_mode, hp_array mask);

// Compiled (fused) elementwise functions, traced once with mx::compile(shapeless) so that they
// produce the same kernels as mlx-lm's @mx.compile helpers.
enum { HP_FN_SWIGLU, HP_FN_GELU_APPROX, HP_FN_CLIP_RESIDUAL };
int hp_compiled(hp_array* out, int fn, const hp_array* inputs, int n);

int hp_random_key(hp_array* out, uint64_t seed);
int hp_random_split(hp_array* a, hp_array* b, hp_array key);
int hp_random_categorical(hp_array* out, hp_array logits, int axis, hp_array key);
int hp_random_uniform(hp_array* out, const int* shape, int ndim, int dtype, hp_array key);
int hp_random_normal(hp_array* out, const int* shape, int ndim, int dtype, float scale, hp_array key);

// GGUF files through mlx::core::load_gguf. A loaded file is an opaque owning handle freed with
// hp_gguf_free. Tensors of types MLX maps to its affine quantization (Q4_0, Q4_1, Q8_0) appear as
// three arrays, NAME.weight (uint32), NAME.scales and NAME.biases; dense ones as one array under
// their GGUF name. The metadata is not exposed here: the Go side reads the header itself.
typedef struct hp_gguf_s* hp_gguf;
int hp_gguf_load(hp_gguf* out, const char* path);
void hp_gguf_free(hp_gguf g);
int hp_gguf_count(hp_gguf g);
// hp_gguf_name returns the name of array i (valid until hp_gguf_free), or NULL when out of range.
const char* hp_gguf_name(hp_gguf g, int i);
int hp_gguf_array(hp_array* out, hp_gguf g, int i);

size_t hp_active_memory(void);
size_t hp_peak_memory(void);
size_t hp_cache_memory(void);
void hp_reset_peak_memory(void);
void hp_clear_cache(void);

// Distributed communication (mlx::core::distributed). A group is an opaque owning handle freed
// with hp_dist_free; MLX keeps the group alive while unevaluated send/recv arrays refer to it.
typedef struct hp_group_s* hp_group;

// hp_dist_init joins a new group of the given backend ("ring", ...) strictly: it fails, never
// falls back to a single-process group. With hostfile non-NULL it first sets MLX_RANK=rank and
// MLX_HOSTFILE=hostfile in the process environment, which is where MLX's ring backend reads
// them; with hostfile NULL the environment is used as it is. It drops MLX's cache of groups
// first, so a process may build a new group after freeing the previous one. The ring backend
// blocks until every rank of the hostfile is connected.
int hp_dist_init(hp_group* out, const char* backend, int rank, const char* hostfile);
void hp_dist_free(hp_group g);
int hp_dist_rank(hp_group g);
int hp_dist_size(hp_group g);
// hp_dist_send returns an empty array whose evaluation sends x to rank dst.
int hp_dist_send(hp_array* out, hp_group g, hp_array x, int dst);
// hp_dist_recv returns an array of the given shape and dtype whose evaluation receives it from src.
int hp_dist_recv(hp_array* out, hp_group g, const int* shape, int ndim, int dtype, int src);

#ifdef __cplusplus
}
#endif
#endif
