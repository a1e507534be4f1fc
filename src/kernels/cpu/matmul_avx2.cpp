// AVX2 + FMA + F16C tile kernels. Compiled with KVSERVE_AVX2_FLAGS; only called when
// dispatch.cpp found the CPU supports them. Everything here has internal linkage (see the
// ODR rule in isa.h).
#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul_kquants.h"

// CMake passes the ISA flags for this file by its name (kvserve_isa_flags); should a build
// miss them, GCC's target pragma enables the same instruction sets for this file alone, so
// the path is never silently dropped. (In C++ the pragma does not define the ISA macros, so
// the guard is our own.) Other compilers need the flags.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#if !defined(__AVX2__)
#pragma GCC target("avx2,fma,f16c")
#endif
#define KVS_ISA_PATH 1
#elif defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

#include "kernels/cpu/intrinsics.h"

namespace kvs::cpu::detail {

namespace {

float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

int32_t hsum256_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// ---- float weights -------------------------------------------------------------------------
// load: 8 weights at element k widened to f32; one: a single weight (row tails).

struct load_f32 {
    static __m256 load(const uint8_t* w, int64_t k) {
        return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + k);
    }
    static float one(const uint8_t* w, int64_t k) { return reinterpret_cast<const float*>(w)[k]; }
};

struct load_f16 {
    static __m256 load(const uint8_t* w, int64_t k) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * k)));
    }
    static float one(const uint8_t* w, int64_t k) {
        return _cvtsh_ss(reinterpret_cast<const uint16_t*>(w)[k]);
    }
};

struct load_bf16 {  // bf16 is the top half of an f32: widen and shift (exact)
    static __m256 load(const uint8_t* w, int64_t k) {
        __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * k));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    static float one(const uint8_t* w, int64_t k) {
        uint32_t u = uint32_t(reinterpret_cast<const uint16_t*>(w)[k]) << 16;
        float f;
        __builtin_memcpy(&f, &u, 4);
        return f;
    }
};

// RX x rows × RW weight rows over the full row; elements past the last multiple of 8 are
// summed in scalar.
template <class L, int RX, int RW>
void float_micro(const gemm_tile& t, int64_t i0, int64_t o0) {
    const auto* x = static_cast<const float*>(t.x) + i0 * t.x_stride;
    const uint8_t* w = t.w + size_t(o0) * t.w_row_bytes;
    __m256 acc[RX][RW];
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) acc[i][r] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= t.n_in; k += 8) {
        __m256 wv[RW];
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) wv[r] = L::load(w + size_t(r) * t.w_row_bytes, k);
#pragma GCC unroll 4
        for (int i = 0; i < RX; ++i) {
            __m256 xv = _mm256_loadu_ps(x + i * t.x_stride + k);
#pragma GCC unroll 4
            for (int r = 0; r < RW; ++r) acc[i][r] = _mm256_fmadd_ps(wv[r], xv, acc[i][r]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i) {
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) {
            float sum = hsum256(acc[i][r]);
            for (int64_t j = k; j < t.n_in; ++j) sum += L::one(w + size_t(r) * t.w_row_bytes, j) * x[i * t.x_stride + j];
            t.y[(i0 + i) * t.ldy + o0 + r] = sum;
        }
    }
}

// ---- quantized weights ---------------------------------------------------------------------
// Without VNNI the byte dot is vpmaddubsw (unsigned × signed bytes → pairs summed into
// saturating int16) followed by vpmaddwd with ones (pairs of int16 → int32). Saturation is
// impossible here: nibbles give |15·127·2| < 2^15, and for q8_0 the sign trick
// (|w| × sign(w)·x) gives at most 128·127·2 = 32512.

// (A namespace-scope vector constant would run AVX2 code in a static initializer, before
// dispatch has checked the CPU; so the constant is built where it is used.)
__m256i pairs_to_i32(__m256i p16) { return _mm256_madd_epi16(p16, _mm256_set1_epi16(1)); }

struct codes_q8_0 {
    static constexpr int block_bytes = 34;
    static constexpr int32_t offset = 0;
    static constexpr bool has_min = false;
    struct code {
        __m256i abs_q, q;
    };
    static code codes(const uint8_t* blk) {
        __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
        return {_mm256_abs_epi8(q), q};
    }
    static __m256i dot(const code& c, __m256i xq) {
        return pairs_to_i32(_mm256_maddubs_epi16(c.abs_q, _mm256_sign_epi8(xq, c.q)));
    }
    static float min(const uint8_t*) { return 0.0f; }
};

__m256i nibbles_to_bytes(const uint8_t* qs) {  // low nibbles → elements 0..15, high → 16..31
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

struct codes_q4_0 {  // codes u = nibble, value (u - 8)·d; the -8·Σqx is added as a bias
    static constexpr int block_bytes = 18;
    static constexpr int32_t offset = 8;
    static constexpr bool has_min = false;
    struct code {
        __m256i u;
    };
    static code codes(const uint8_t* blk) { return {nibbles_to_bytes(blk + 2)}; }
    static __m256i dot(const code& c, __m256i xq) {
        return pairs_to_i32(_mm256_maddubs_epi16(c.u, xq));
    }
    static float min(const uint8_t*) { return 0.0f; }
};

struct codes_q4_1 {  // value u·d + m
    static constexpr int block_bytes = 20;
    static constexpr int32_t offset = 0;
    static constexpr bool has_min = true;
    struct code {
        __m256i u;
    };
    static code codes(const uint8_t* blk) { return {nibbles_to_bytes(blk + 4)}; }
    static __m256i dot(const code& c, __m256i xq) {
        return pairs_to_i32(_mm256_maddubs_epi16(c.u, xq));
    }
    static float min(const uint8_t* blk) { return _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk + 2)); }
};

template <class C, int RX, int RW>
void quant_micro(const gemm_tile& t, int64_t i0, int64_t o0) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    const int64_t nb = t.n_in / 32;
    const uint8_t* w = t.w + size_t(o0) * t.w_row_bytes;
    __m256 acc[RX][RW];
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) acc[i][r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        typename C::code wq[RW];
        float dw[RW], mw[RW];
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) {
            const uint8_t* blk = w + size_t(r) * t.w_row_bytes + size_t(b) * C::block_bytes;
            wq[r] = C::codes(blk);
            dw[r] = _cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk));
            mw[r] = C::min(blk);
        }
#pragma GCC unroll 4
        for (int i = 0; i < RX; ++i) {
            const int64_t row = i0 + i;
            __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + row * t.n_in + b * 32));
            const int32_t sx = x.s[row * nb + b];
            const float dx = x.d[row * nb + b];
#pragma GCC unroll 4
            for (int r = 0; r < RW; ++r) {
                __m256i p = C::dot(wq[r], xq);
                if constexpr (C::offset != 0) p = _mm256_add_epi32(p, _mm256_castsi128_si256(_mm_cvtsi32_si128(-C::offset * sx)));
                __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw[r] * dx));
                if constexpr (C::has_min) s = _mm256_add_ps(s, _mm256_castps128_ps256(_mm_set_ss(mw[r] * dx * float(sx))));
                acc[i][r] = _mm256_add_ps(s, acc[i][r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) t.y[(i0 + i) * t.ldy + o0 + r] = hsum256(acc[i][r]);
}

// ---- tile drivers (see matmul_avx512.cpp) ------------------------------------------------------

template <class P, int RX, int RW>
struct float_kernel {
    static void run(const gemm_tile& t, int64_t i0, int64_t o0) { float_micro<P, RX, RW>(t, i0, o0); }
};
template <class P, int RX, int RW>
struct quant_kernel {
    static void run(const gemm_tile& t, int64_t i0, int64_t o0) { quant_micro<P, RX, RW>(t, i0, o0); }
};

template <template <class, int, int> class K, class P, int RW>
void x_rows(const gemm_tile& t, int64_t o0) {
    int64_t i = 0;
    for (; i + 4 <= t.m; i += 4) K<P, 4, RW>::run(t, i, o0);
    switch (t.m - i) {
        case 3: K<P, 3, RW>::run(t, i, o0); break;
        case 2: K<P, 2, RW>::run(t, i, o0); break;
        case 1: K<P, 1, RW>::run(t, i, o0); break;
        default: break;
    }
}

template <template <class, int, int> class K, class P>
void drive(const gemm_tile& t) {
    int64_t o = 0;
    if (t.m == 1) {
        for (; o + 4 <= t.n_o; o += 4) K<P, 1, 4>::run(t, 0, o);
    }
    for (; o + 2 <= t.n_o; o += 2) x_rows<K, P, 2>(t, o);
    for (; o < t.n_o; ++o) x_rows<K, P, 1>(t, o);
}

void gemm_f32(const gemm_tile& t) { drive<float_kernel, load_f32>(t); }
void gemm_f16(const gemm_tile& t) { drive<float_kernel, load_f16>(t); }
void gemm_bf16(const gemm_tile& t) { drive<float_kernel, load_bf16>(t); }
void gemm_q8_0(const gemm_tile& t) { drive<quant_kernel, codes_q8_0>(t); }
void gemm_q4_0(const gemm_tile& t) { drive<quant_kernel, codes_q4_0>(t); }
void gemm_q4_1(const gemm_tile& t) { drive<quant_kernel, codes_q4_1>(t); }

// ---- activation quantization and dot ------------------------------------------------------------

// d = amax / 127, q = RNE(x · 127 / amax), identical to the scalar path.
void quantize_q8_row(const float* x, int64_t n, int8_t* qs, float* d, int32_t* s) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t b = 0; b < n / 32; ++b) {
        __m256 v[4];
        __m256 a = _mm256_setzero_ps();
        for (int j = 0; j < 4; ++j) {
            v[j] = _mm256_loadu_ps(x + b * 32 + 8 * j);
            a = _mm256_max_ps(a, _mm256_and_ps(v[j], abs_mask));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float amax = _mm_cvtss_f32(m);
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], vid));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        // Packing works within 128-bit lanes; the final permute restores element order.
        __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
        __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * 32), p8);
        d[b] = amax / 127.0f;
        s[b] = hsum256_epi32(sum);
    }
}

float dot_f32(const float* a, const float* b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float sum = hsum256(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

constexpr kernel_table table{gemm_f32,  gemm_f16,  gemm_bf16,       gemm_q8_0,
                             gemm_q4_0, gemm_q4_1, quantize_q8_row, dot_f32, nullptr,
                             gemm_q4_k_avx2, gemm_q5_k_avx2, gemm_q6_k_avx2, quantize_q8k_row_avx2};

}  // namespace

const kernel_table* kernels_avx2() { return &table; }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
const kernel_table* kernels_avx2() { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
