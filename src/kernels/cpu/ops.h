// CPU kernels used by the forward pass. Each has a scalar reference (namespace ref) that the
// SIMD paths are tested against by normalized error, for every dtype and every ISA compiled.
// The ISA used at run time is the best the CPU supports, unless overridden (tests, benches).
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace kvs::cpu {

enum class isa { scalar = 0, avx2 = 1, avx512 = 2 };
const char* isa_name(isa i);
bool isa_compiled(isa i);    // the build contains this path
bool isa_supported(isa i);   // compiled and the CPU can run it
isa isa_active();            // the path kernels dispatch to now
void isa_override(isa i);    // tests/benches: force a supported path (ignored if unsupported)
void isa_reset();            // back to the best supported path
// The CPU has AVX512-FP16 (Intel Sapphire Rapids and later; read from CPUID, which GCC 12's
// __builtin_cpu_supports does not know). It picks the KV format for quantized weights.
bool cpu_has_avx512_fp16();

// How a weight matrix's blocks are ordered in memory.
//   row_major:     GGUF's order, row after row (every dtype).
//   interleaved16: q4_0, q8_0, f16, bf16; n_out a multiple of 16, n_in of 32 (interleave.h):
//                  rows in groups of 16 whose blocks are interleaved so that one 64-byte load
//                  holds 4 bytes of each of the 16 rows; the same bytes per row as row_major.
enum class weight_layout : uint8_t { row_major = 0, interleaved16 = 1 };

// A weight matrix of n_out rows, each n_in elements of type `type`.
struct weight_view {
    const void* data = nullptr;
    dtype type = dtype::f32;
    int64_t n_out = 0;  // rows (output features)
    int64_t n_in = 0;   // elements per row (input features)
    weight_layout layout = weight_layout::row_major;
};

// How the matmul front end (matmul.cpp) splits one call into tasks, and which kernel variant
// it picks, for one weight dtype and one class of x row counts (matmul_m_class). The defaults
// are the fixed choices the front end was tuned with on Zen 4; autotune.h measures others on
// the running CPU. Work-split knobs (m_block, tasks_per_thread, l2_kib) only change which
// thread computes which tile: results are bit-identical whatever their values. bf16_dot
// changes the arithmetic (the bf16 dot-product contract, matmul_bf16dot_avx512.cpp).
struct matmul_tuning {
    int32_t m_block = 64;          // most x rows per task (m >= 2; fixed for row-major k-quant weights)
    int32_t tasks_per_thread = 8;  // weight-row chunks per pool thread, over all x row blocks
    int32_t l2_kib = 512;          // m > 8: a task's weight rows stay within this many KiB (0: no limit)
    bool bf16_dot = true;          // f16/bf16 weights, m >= 2: bf16 dot products where the CPU has them
    bool operator==(const matmul_tuning&) const = default;
};

// Classes of x row counts with their own tuning: decode (a GEMV, bandwidth-bound), small
// batches (batched decode, short chunks) and prompt chunks.
enum class matmul_m_class : uint8_t { gemv = 0, small = 1, large = 2 };
inline constexpr int matmul_n_m_classes = 3;
inline constexpr matmul_m_class matmul_m_class_of(int64_t m) {
    return m <= 1 ? matmul_m_class::gemv : m <= 16 ? matmul_m_class::small : matmul_m_class::large;
}
const char* matmul_m_class_name(matmul_m_class c);  // "gemv", "small", "large"

// The tuning of every (weight dtype, m class), and the load-time layout choice per dtype.
struct matmul_tuning_table {
    matmul_tuning entry[dtype_id_limit][matmul_n_m_classes];  // [dtype id][m class]
    // Whether loaders may repack weights of this dtype to interleaved16 (where the CPU has
    // kernels for the layout; model/llama.h, weight_repack::automatic).
    bool repack[dtype_id_limit];
    matmul_tuning_table();  // defaults everywhere
    const matmul_tuning& at(dtype t, matmul_m_class c) const { return entry[uint32_t(t) % dtype_id_limit][int(c)]; }
    matmul_tuning& at(dtype t, matmul_m_class c) { return entry[uint32_t(t) % dtype_id_limit][int(c)]; }
    bool repack_of(dtype t) const { return repack[uint32_t(t) % dtype_id_limit]; }
    void set_repack(dtype t, bool on) { repack[uint32_t(t) % dtype_id_limit] = on; }
};

// The table matmul calls use when none is passed: process-wide, defaults until set (model
// loading sets it when asked to tune). Reading is always safe; set() while other threads run
// matmuls is safe too (they finish with the table they started with).
const matmul_tuning_table& matmul_tuning_active();
void matmul_tuning_set(const matmul_tuning_table& t);
void matmul_tuning_reset();  // back to the defaults

// How much matmul tuning model loading does (autotune.h): none, a few seconds, or longer.
enum class tune_level : uint8_t { off = 0, fast = 1, full = 2 };
const char* tune_level_name(tune_level l);                // "off", "fast", "full"
bool tune_level_from_name(const std::string& s, tune_level* out);

// y (m, n_out) = x (m, n_in) · wᵀ.  x and y are row-major float, contiguous.
// Quantized weights may quantize x to 8 bits on the fly (as ggml does for q4_0/q8_0 dots);
// tolerance against the float64 reference is then per dtype. Work is split over the pool as
// `tuning` says, or as matmul_tuning_active() says for w's dtype and m when it is null.
void matmul(const weight_view& w, const float* x, int64_t m, float* y, thread_pool& pool,
            const matmul_tuning* tuning = nullptr);
// Several matmuls that share x, in one pass over the pool (one fork/join, x quantized once):
// y[j] (m, w[j].n_out) = x · w[j]ᵀ for j in [0, n_w), n_w <= 8, every w[j].n_in equal
// (otherwise every y[j] is NaN). Values are identical to n_w separate matmul calls with the
// same tuning. The active tuning is that of w[0]'s dtype.
void matmul_multi(const weight_view* w, int n_w, const float* x, int64_t m, float* const* y, thread_pool& pool,
                  const matmul_tuning* tuning = nullptr);
// The SwiGLU feed-forward input in one pass: y_gate = x · gateᵀ, y_up = x · upᵀ (both
// (m, n_out), used as scratch) and out = swiglu(y_gate, y_up) (m, n_out), computed chunk by
// chunk while the chunk is in cache. out may alias y_gate. gate.n_out must equal up.n_out.
// y_up may be null: each task's up tile then lives in a per-worker scratch of one tile (a
// few hundred KiB at most, kept between calls), so no (m, n_out) up matrix is ever stored;
// the values are the same either way.
void matmul_swiglu(const weight_view& gate, const weight_view& up, const float* x, int64_t m, float* y_gate,
                   float* y_up, float* out, thread_pool& pool, const matmul_tuning* tuning = nullptr);
// Whether matmul has kernels for weights of this dtype (f32, f16, bf16, q8_0, q4_0, q4_1,
// q4_k, q5_k, q6_k).
// matmul with an unsupported dtype, or n_in not a multiple of its block size, writes NaN.
bool matmul_supported(dtype t);

// y = x / sqrt(mean(x²) + eps) * weight.  (n)
void rmsnorm(const float* x, const float* weight, float* y, int64_t n, float eps);
// The residual add fused with the next norm: x += delta, then y = rmsnorm(x) while x is in
// cache. Bit-identical to the two steps.  (n)
void add_rmsnorm(float* x, const float* delta, const float* weight, float* y, int64_t n, float eps);

enum class rope_layout { normal = 0, neox = 1 };
// Rotates the first n_rot dims of each head of x (n_head, head_dim) in place for position pos.
// normal (llama): pairs (2i, 2i+1); neox (qwen2, ...): pairs (i, i + n_rot/2).
// theta_i = pos * freq_scale * freq_base^(-2i/n_rot).
void rope(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos,
          float freq_base, float freq_scale, rope_layout layout);

// The same rotation in two steps, so that the angles of a position are computed once and
// reused (all heads of q and k, every layer): rope_angles fills cos_t, sin_t (n_rot / 2) for
// pos (n_rot already clamped to head_dim), rope_apply rotates x with them. rope(...) equals
// rope_angles followed by rope_apply bit for bit.
void rope_angles(int64_t n_rot, int64_t pos, float freq_base, float freq_scale, float* cos_t, float* sin_t);
void rope_apply(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, const float* cos_t, const float* sin_t,
                rope_layout layout);

// out[i] = silu(gate[i]) * up[i]  (n)
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// In-place softmax over n values; returns log(sum(exp(x - max))) + max (the LSE).
float softmax(float* x, int64_t n);

// Dot product of two float vectors (n).
float dot_f32(const float* a, const float* b, int64_t n);

namespace ref {
// Float64-accumulating scalar references.
void matmul(const weight_view& w, const float* x, int64_t m, float* y);
void rmsnorm(const float* x, const float* weight, float* y, int64_t n, float eps);
void rope(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos,
          float freq_base, float freq_scale, rope_layout layout);
void swiglu(const float* gate, const float* up, float* out, int64_t n);
float softmax(float* x, int64_t n);
}  // namespace ref

}  // namespace kvs::cpu
