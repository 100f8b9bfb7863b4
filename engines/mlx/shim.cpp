// Implementation of shim.h. Each entry point wraps its body in HP_TRY so that MLX's C++
// exceptions become a status code and a recorded message instead of unwinding into Go.
#include "shim.h"

#include <cstdlib>
#include <functional>
#include <memory>
#include <cstring>
#include <optional>
#include <algorithm>
#include <variant>
#include <string>
#include <vector>

#include "mlx/mlx.h"

namespace mx = mlx::core;

struct hp_array_s {
  mx::array a;
};

struct hp_gguf_s {
  std::vector<std::string> names;
  std::vector<mx::array> arrays;
};

namespace {

thread_local std::string last_error;

int fail(const char* what) {
  last_error = what ? what : "unknown error";
  return 1;
}

#define HP_TRY(body)                     \
  try {                                  \
    body;                                \
    return 0;                            \
  } catch (const std::exception& e) {    \
    return fail(e.what());               \
  } catch (...) {                        \
    return fail("unknown C++ exception"); \
  }

hp_array wrap(mx::array a) { return new hp_array_s{std::move(a)}; }

mx::Dtype to_dtype(int code) {
  switch (code) {
    case HP_BOOL: return mx::bool_;
    case HP_UINT8: return mx::uint8;
    case HP_UINT16: return mx::uint16;
    case HP_UINT32: return mx::uint32;
    case HP_UINT64: return mx::uint64;
    case HP_INT8: return mx::int8;
    case HP_INT16: return mx::int16;
    case HP_INT32: return mx::int32;
    case HP_INT64: return mx::int64;
    case HP_FLOAT16: return mx::float16;
    case HP_BFLOAT16: return mx::bfloat16;
    case HP_FLOAT32: return mx::float32;
  }
  throw std::invalid_argument("unsupported dtype code " + std::to_string(code));
}

int from_dtype(mx::Dtype d) {
  switch (d.val()) {
    case mx::Dtype::Val::bool_: return HP_BOOL;
    case mx::Dtype::Val::uint8: return HP_UINT8;
    case mx::Dtype::Val::uint16: return HP_UINT16;
    case mx::Dtype::Val::uint32: return HP_UINT32;
    case mx::Dtype::Val::uint64: return HP_UINT64;
    case mx::Dtype::Val::int8: return HP_INT8;
    case mx::Dtype::Val::int16: return HP_INT16;
    case mx::Dtype::Val::int32: return HP_INT32;
    case mx::Dtype::Val::int64: return HP_INT64;
    case mx::Dtype::Val::float16: return HP_FLOAT16;
    case mx::Dtype::Val::bfloat16: return HP_BFLOAT16;
    case mx::Dtype::Val::float32: return HP_FLOAT32;
    default: return -1;
  }
}

mx::Shape to_shape(const int* s, int n) { return mx::Shape(s, s + n); }

std::vector<mx::array> to_vec(const hp_array* arrs, int n) {
  std::vector<mx::array> v;
  v.reserve(n);
  for (int i = 0; i < n; i++) v.push_back(arrs[i]->a);
  return v;
}

std::optional<mx::array> opt(hp_array a) {
  if (a == nullptr) return std::nullopt;
  return a->a;
}

}  // namespace

extern "C" {

const char* hp_last_error(void) { return last_error.c_str(); }

const char* hp_version(void) { return mx::version(); }

int hp_use_cpu(void) { HP_TRY(mx::set_default_device(mx::Device::cpu)) }

int hp_default_device(int* kind, char* name, size_t n) {
  HP_TRY({
    const mx::Device& d = mx::default_device();
    *kind = d.type == mx::Device::gpu ? 1 : 0;
    std::string s;
    if (d.type == mx::Device::gpu) {
      const auto& info = mx::device_info(d);
      auto it = info.find("device_name");
      if (it != info.end() && std::holds_alternative<std::string>(it->second)) s = std::get<std::string>(it->second);
    }
    if (n > 0) {
      size_t k = std::min(n - 1, s.size());
      std::memcpy(name, s.data(), k);
      name[k] = 0;
    }
  })
}

void hp_array_free(hp_array a) { delete a; }

int hp_array_from_data(hp_array* out, const void* data, size_t nbytes, const int* shape, int ndim, int dtype) {
  HP_TRY({
    mx::Dtype dt = to_dtype(dtype);
    mx::Shape sh = to_shape(shape, ndim);
    size_t want = dt.size();
    for (int d : sh) {
      if (d < 0) throw std::invalid_argument("negative dimension");
      want *= static_cast<size_t>(d);
    }
    if (want != nbytes) {
      throw std::invalid_argument("data has " + std::to_string(nbytes) + " bytes, shape and dtype need " +
                                  std::to_string(want));
    }
    void* buf = std::malloc(nbytes > 0 ? nbytes : 1);
    if (buf == nullptr) throw std::bad_alloc();
    if (nbytes > 0) std::memcpy(buf, data, nbytes);
    *out = wrap(mx::array(buf, std::move(sh), dt, [](void* p) { std::free(p); }));
  })
}

int hp_scalar(hp_array* out, double v, int dtype) { HP_TRY(*out = wrap(mx::array(static_cast<float>(v), to_dtype(dtype)))) }

int hp_array_ndim(hp_array a) { return static_cast<int>(a->a.ndim()); }

int hp_array_shape(hp_array a, int* shape) {
  for (size_t i = 0; i < a->a.ndim(); i++) shape[i] = a->a.shape(i);
  return 0;
}

int hp_array_dtype(hp_array a) { return from_dtype(a->a.dtype()); }

size_t hp_array_nbytes(hp_array a) { return a->a.nbytes(); }

int hp_array_read(hp_array a, void* dst, size_t nbytes) {
  HP_TRY({
    // Wait for a itself, as mlx's item() does: an array already enqueued (async_eval) is only
    // waited on. Wrapping it in contiguous() first would put a new op at the back of the stream's
    // queue, behind anything enqueued since (in pipelined decoding, the whole next step), so the
    // read would return one step late and leave the device idle while the host builds the step
    // after. Only an array that is not row-contiguous once evaluated gets copied.
    mx::array c = a->a;
    c.eval();
    if (!c.flags().row_contiguous || c.data_size() != c.size()) {
      c = mx::contiguous(c);
      c.eval();
    }
    if (c.nbytes() != nbytes) {
      throw std::invalid_argument("array has " + std::to_string(c.nbytes()) + " bytes, destination " +
                                  std::to_string(nbytes));
    }
    if (nbytes > 0) std::memcpy(dst, c.data<void>(), nbytes);
  })
}

int hp_array_ready(hp_array a) { return a->a.is_available() ? 1 : 0; }

int hp_eval(const hp_array* arrs, int n) { HP_TRY(mx::eval(to_vec(arrs, n))) }

int hp_async_eval(const hp_array* arrs, int n) { HP_TRY(mx::async_eval(to_vec(arrs, n))) }

int hp_unary(hp_array* out, int op, hp_array in) {
  HP_TRY({
    const mx::array& a = in->a;
    switch (op) {
      case HP_NEG: *out = wrap(mx::negative(a)); break;
      case HP_EXP: *out = wrap(mx::exp(a)); break;
      case HP_LOG: *out = wrap(mx::log(a)); break;
      case HP_SQRT: *out = wrap(mx::sqrt(a)); break;
      case HP_RSQRT: *out = wrap(mx::rsqrt(a)); break;
      case HP_SIGMOID: *out = wrap(mx::sigmoid(a)); break;
      case HP_TANH: *out = wrap(mx::tanh(a)); break;
      case HP_SQUARE: *out = wrap(mx::square(a)); break;
      case HP_ABS: *out = wrap(mx::abs(a)); break;
      case HP_SIN: *out = wrap(mx::sin(a)); break;
      case HP_COS: *out = wrap(mx::cos(a)); break;
      case HP_ERF: *out = wrap(mx::erf(a)); break;
      case HP_FLOOR: *out = wrap(mx::floor(a)); break;
      case HP_LOGICAL_NOT: *out = wrap(mx::logical_not(a)); break;
      case HP_COPY: *out = wrap(mx::copy(a)); break;
      case HP_LOG1P: *out = wrap(mx::log1p(a)); break;
      default: throw std::invalid_argument("unknown unary op " + std::to_string(op));
    }
  })
}

int hp_binary(hp_array* out, int op, hp_array x, hp_array y) {
  HP_TRY({
    const mx::array& a = x->a;
    const mx::array& b = y->a;
    switch (op) {
      case HP_ADD: *out = wrap(mx::add(a, b)); break;
      case HP_SUB: *out = wrap(mx::subtract(a, b)); break;
      case HP_MUL: *out = wrap(mx::multiply(a, b)); break;
      case HP_DIV: *out = wrap(mx::divide(a, b)); break;
      case HP_MAXIMUM: *out = wrap(mx::maximum(a, b)); break;
      case HP_MINIMUM: *out = wrap(mx::minimum(a, b)); break;
      case HP_POWER: *out = wrap(mx::power(a, b)); break;
      case HP_EQUAL: *out = wrap(mx::equal(a, b)); break;
      case HP_GREATER: *out = wrap(mx::greater(a, b)); break;
      case HP_LESS: *out = wrap(mx::less(a, b)); break;
      case HP_GREATER_EQUAL: *out = wrap(mx::greater_equal(a, b)); break;
      case HP_LESS_EQUAL: *out = wrap(mx::less_equal(a, b)); break;
      case HP_LOGICAL_AND: *out = wrap(mx::logical_and(a, b)); break;
      case HP_MATMUL: *out = wrap(mx::matmul(a, b)); break;
      default: throw std::invalid_argument("unknown binary op " + std::to_string(op));
    }
  })
}

int hp_reduce(hp_array* out, int op, hp_array in, const int* axes_p, int naxes, int keepdims) {
  HP_TRY({
    const mx::array& a = in->a;
    std::vector<int> axes(axes_p, axes_p + naxes);
    if (naxes == 0) {
      for (int i = 0; i < static_cast<int>(a.ndim()); i++) axes.push_back(i);
    }
    bool kd = keepdims != 0;
    switch (op) {
      case HP_SUM: *out = wrap(mx::sum(a, axes, kd)); break;
      case HP_MEAN: *out = wrap(mx::mean(a, axes, kd)); break;
      case HP_MAX: *out = wrap(mx::max(a, axes, kd)); break;
      case HP_MIN: *out = wrap(mx::min(a, axes, kd)); break;
      case HP_LOGSUMEXP: *out = wrap(mx::logsumexp(a, axes, kd)); break;
      case HP_ARGMAX: *out = wrap(mx::argmax(a, axes.at(0), kd)); break;
      case HP_ARGMIN: *out = wrap(mx::argmin(a, axes.at(0), kd)); break;
      case HP_CUMSUM: *out = wrap(mx::cumsum(a, axes.at(0))); break;
      default: throw std::invalid_argument("unknown reduction " + std::to_string(op));
    }
  })
}

int hp_reshape(hp_array* out, hp_array a, const int* shape, int ndim) {
  HP_TRY(*out = wrap(mx::reshape(a->a, to_shape(shape, ndim))))
}

int hp_transpose(hp_array* out, hp_array a, const int* axes, int naxes) {
  HP_TRY(*out = wrap(mx::transpose(a->a, std::vector<int>(axes, axes + naxes))))
}

int hp_astype(hp_array* out, hp_array a, int dtype) { HP_TRY(*out = wrap(mx::astype(a->a, to_dtype(dtype)))) }

int hp_view(hp_array* out, hp_array a, int dtype) { HP_TRY(*out = wrap(mx::view(a->a, to_dtype(dtype)))) }

int hp_slice(hp_array* out, hp_array a, const int* start, const int* stop, const int* strides, int n) {
  HP_TRY(*out = wrap(mx::slice(a->a, to_shape(start, n), to_shape(stop, n), to_shape(strides, n))))
}

int hp_slice_update(hp_array* out, hp_array src, hp_array update, const int* start, const int* stop,
                    const int* strides, int n) {
  HP_TRY(*out = wrap(mx::slice_update(src->a, update->a, to_shape(start, n), to_shape(stop, n), to_shape(strides, n))))
}

int hp_concat(hp_array* out, const hp_array* arrs, int n, int axis) {
  HP_TRY(*out = wrap(mx::concatenate(to_vec(arrs, n), axis)))
}

int hp_take(hp_array* out, hp_array a, hp_array indices, int axis) { HP_TRY(*out = wrap(mx::take(a->a, indices->a, axis))) }

int hp_take_along_axis(hp_array* out, hp_array a, hp_array indices, int axis) {
  HP_TRY(*out = wrap(mx::take_along_axis(a->a, indices->a, axis)))
}

int hp_where(hp_array* out, hp_array cond, hp_array a, hp_array b) { HP_TRY(*out = wrap(mx::where(cond->a, a->a, b->a))) }

int hp_arange(hp_array* out, double start, double stop, double step, int dtype) {
  HP_TRY(*out = wrap(mx::arange(start, stop, step, to_dtype(dtype))))
}

int hp_full(hp_array* out, const int* shape, int ndim, double v, int dtype) {
  HP_TRY(*out = wrap(mx::full(to_shape(shape, ndim), mx::array(static_cast<float>(v)), to_dtype(dtype))))
}

int hp_softmax(hp_array* out, hp_array a, int axis, int precise) { HP_TRY(*out = wrap(mx::softmax(a->a, axis, precise != 0))) }

int hp_sort(hp_array* out, hp_array a, int axis, int arg) {
  HP_TRY(*out = wrap(arg ? mx::argsort(a->a, axis) : mx::sort(a->a, axis)))
}

int hp_argpartition(hp_array* out, hp_array a, int kth, int axis) { HP_TRY(*out = wrap(mx::argpartition(a->a, kth, axis))) }

int hp_tril(hp_array* out, hp_array a, int k) { HP_TRY(*out = wrap(mx::tril(a->a, k))) }

int hp_quantize(hp_array* wq, hp_array* scales, hp_array* biases, hp_array w, int group_size, int bits) {
  HP_TRY({
    std::vector<mx::array> r = mx::quantize(w->a, group_size, bits, "affine");
    if (r.size() != 3) throw std::runtime_error("affine quantize returned " + std::to_string(r.size()) + " arrays");
    *wq = wrap(r[0]);
    *scales = wrap(r[1]);
    *biases = wrap(r[2]);
  })
}

int hp_dequantize(hp_array* out, hp_array wq, hp_array scales, hp_array biases, int group_size, int bits, int dtype) {
  HP_TRY(*out = wrap(mx::dequantize(wq->a, scales->a, opt(biases), group_size, bits, "affine", std::nullopt,
                                    std::optional<mx::Dtype>(to_dtype(dtype)))))
}

int hp_quantized_matmul(hp_array* out, hp_array x, hp_array wq, hp_array scales, hp_array biases, int transpose,
                        int group_size, int bits) {
  HP_TRY(*out = wrap(mx::quantized_matmul(x->a, wq->a, scales->a, opt(biases), transpose != 0, group_size, bits, "affine")))
}

int hp_rms_norm(hp_array* out, hp_array x, hp_array weight, float eps) {
  HP_TRY(*out = wrap(mx::fast::rms_norm(x->a, opt(weight), eps)))
}

int hp_rope(hp_array* out, hp_array x, int dims, int traditional, float base, float scale, int offset, hp_array freqs) {
  HP_TRY({
    std::optional<float> b = base;
    if (freqs != nullptr) b = std::nullopt;
    *out = wrap(mx::fast::rope(x->a, dims, traditional != 0, b, scale, offset, opt(freqs)));
  })
}

int hp_rope_offsets(hp_array* out, hp_array x, int dims, int traditional, float base, float scale, hp_array offsets, hp_array freqs) {
  HP_TRY({
    std::optional<float> b = base;
    if (freqs != nullptr) b = std::nullopt;
    *out = wrap(mx::fast::rope(x->a, dims, traditional != 0, b, scale, offsets->a, opt(freqs)));
  })
}

int hp_sdpa(hp_array* out, hp_array q, hp_array k, hp_array v, float scale, const char* mask_mode, hp_array mask) {
  HP_TRY({
    std::string mode = mask_mode ? mask_mode : "";
    std::optional<mx::array> m;
    if (mode == "array") {
      if (mask == nullptr) throw std::invalid_argument("sdpa: mask mode \"array\" needs a mask");
      m = mask->a;
      mode = "";
    }
    *out = wrap(mx::fast::scaled_dot_product_attention(q->a, k->a, v->a, scale, mode, m));
  })
}

namespace {

using Fn = std::function<std::vector<mx::array>(const std::vector<mx::array>&)>;

// silu(gate) * x, as mlx_lm.models.activations.swiglu.
std::vector<mx::array> swiglu(const std::vector<mx::array>& in) {
  const mx::array& g = in.at(0);
  return {mx::multiply(mx::multiply(g, mx::sigmoid(g)), in.at(1))};
}

// 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), as mlx.nn.gelu_approx; Python's
// scalars are weakly typed, so every constant takes x's dtype.
std::vector<mx::array> gelu_approx(const std::vector<mx::array>& in) {
  const mx::array& x = in.at(0);
  auto c = [&](double v) { return mx::array(static_cast<float>(v), x.dtype()); };
  mx::array inner = mx::add(x, mx::multiply(c(0.044715), mx::power(x, c(3))));
  mx::array t = mx::tanh(mx::multiply(c(0.7978845608028654), inner));
  return {mx::multiply(mx::multiply(c(0.5), x), mx::add(c(1), t))};
}

// x + y, computed in float32 and clipped for float16 (Gemma 3's clip_residual).
std::vector<mx::array> clip_residual(const std::vector<mx::array>& in) {
  const mx::array& x = in.at(0);
  const mx::array& y = in.at(1);
  if (x.dtype() != mx::float16) return {mx::add(x, y)};
  float bound = 65504.0f;
  mx::array s = mx::add(mx::astype(x, mx::float32), mx::astype(y, mx::float32));
  return {mx::astype(mx::clip(s, mx::array(-bound), mx::array(bound)), mx::float16)};
}

Fn& compiled(int fn) {
  static Fn fns[] = {mx::compile(swiglu, true), mx::compile(gelu_approx, true), mx::compile(clip_residual, true)};
  if (fn < 0 || fn > 2) throw std::invalid_argument("unknown compiled function " + std::to_string(fn));
  return fns[fn];
}

}  // namespace

int hp_compiled(hp_array* out, int fn, const hp_array* inputs, int n) {
  HP_TRY({
    std::vector<mx::array> r = compiled(fn)(to_vec(inputs, n));
    *out = wrap(r.at(0));
  })
}

int hp_random_key(hp_array* out, uint64_t seed) { HP_TRY(*out = wrap(mx::random::key(seed))) }

int hp_random_split(hp_array* a, hp_array* b, hp_array key) {
  HP_TRY({
    auto p = mx::random::split(key->a);
    *a = wrap(p.first);
    *b = wrap(p.second);
  })
}

int hp_random_categorical(hp_array* out, hp_array logits, int axis, hp_array key) {
  HP_TRY(*out = wrap(mx::random::categorical(logits->a, axis, opt(key))))
}

int hp_random_uniform(hp_array* out, const int* shape, int ndim, int dtype, hp_array key) {
  HP_TRY(*out = wrap(mx::random::uniform(to_shape(shape, ndim), to_dtype(dtype), opt(key))))
}

int hp_random_normal(hp_array* out, const int* shape, int ndim, int dtype, float scale, hp_array key) {
  HP_TRY(*out = wrap(mx::random::normal(to_shape(shape, ndim), to_dtype(dtype), 0.0f, scale, opt(key))))
}

int hp_gguf_load(hp_gguf* out, const char* path) {
  HP_TRY({
    mx::GGUFLoad loaded = mx::load_gguf(path);
    auto g = std::make_unique<hp_gguf_s>();
    for (auto& [name, arr] : loaded.first) {
      g->names.push_back(name);
      g->arrays.push_back(arr);
    }
    *out = g.release();
  })
}

void hp_gguf_free(hp_gguf g) { delete g; }

int hp_gguf_count(hp_gguf g) { return static_cast<int>(g->names.size()); }

const char* hp_gguf_name(hp_gguf g, int i) {
  if (i < 0 || i >= static_cast<int>(g->names.size())) return nullptr;
  return g->names[i].c_str();
}

int hp_gguf_array(hp_array* out, hp_gguf g, int i) {
  HP_TRY({
    if (i < 0 || i >= static_cast<int>(g->arrays.size())) throw std::out_of_range("gguf array index out of range");
    *out = wrap(g->arrays[i]);
  })
}

size_t hp_active_memory(void) { return mx::get_active_memory(); }
size_t hp_peak_memory(void) { return mx::get_peak_memory(); }
size_t hp_cache_memory(void) { return mx::get_cache_memory(); }
void hp_reset_peak_memory(void) { mx::reset_peak_memory(); }
void hp_clear_cache(void) { mx::clear_cache(); }

}  // extern "C"

namespace dist = mx::distributed;

struct hp_group_s {
  dist::Group g;
};

extern "C" {

int hp_dist_init(hp_group* out, const char* backend, int rank, const char* hostfile) {
  HP_TRY({
    std::string bk = backend ? backend : "";
    if (bk.empty()) throw std::invalid_argument("no distributed backend named");
    if (!dist::is_available(bk)) {
      throw std::runtime_error("distributed backend \"" + bk + "\" is not available in MLX " + mx::version());
    }
    if (hostfile != nullptr) {
      if (rank < 0) throw std::invalid_argument("negative rank " + std::to_string(rank));
      std::string r = std::to_string(rank);
      if (setenv("MLX_RANK", r.c_str(), 1) != 0 || setenv("MLX_HOSTFILE", hostfile, 1) != 0) {
        throw std::runtime_error("setenv MLX_RANK/MLX_HOSTFILE failed");
      }
    }
    dist::clear_backends();
    *out = new hp_group_s{dist::init(true, bk)};
  })
}

void hp_dist_free(hp_group g) { delete g; }

int hp_dist_rank(hp_group g) { return g->g.rank(); }

int hp_dist_size(hp_group g) { return g->g.size(); }

int hp_dist_send(hp_array* out, hp_group g, hp_array x, int dst) { HP_TRY(*out = wrap(dist::send(x->a, dst, g->g))) }

int hp_dist_recv(hp_array* out, hp_group g, const int* shape, int ndim, int dtype, int src) {
  HP_TRY(*out = wrap(dist::recv(to_shape(shape, ndim), to_dtype(dtype), src, g->g)))
}

}  // extern "C"
