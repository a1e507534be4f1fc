// AVX-512 tile kernels (F, BW, VL, DQ, VNNI; F16C for f16 weights). Compiled with
// KVSERVE_AVX512_FLAGS; only called when dispatch.cpp found the CPU supports them.
// Everything here has internal linkage (see the ODR rule in isa.h).
#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul_kquants.h"

// CMake passes the ISA flags for this file by its name (kvserve_isa_flags); should a build
// miss them, GCC's target pragma enables the same instruction sets for this file alone, so
// the path is never silently dropped. (In C++ the pragma does not define the ISA macros, so
// the guard is our own.) Other compilers need the flags.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#if !defined(__AVX512F__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c")
#endif
#define KVS_ISA_PATH 1
#elif defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

#include "kernels/cpu/intrinsics.h"

namespace kvs::cpu::detail {

namespace {

// ---- helpers ---------------------------------------------------------------------------------

float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__mmask16 tail_mask(int64_t n) { return __mmask16((1u << n) - 1); }

// Software prefetch for GEMV. A decode micro-kernel streams RW weight rows side by side;
// with short rows (1-4 KB) each row is too short a stream for the hardware prefetcher to
// ramp up, and the kernel stalls on DRAM latency. The RW rows of the next group are
// contiguous, so while the current group is consumed step by step, the next group is
// prefetched at the same rate: `bytes` ahead, split evenly over `n_steps` calls of next().
struct group_prefetch {
    const char* p;
    const char* end;
    size_t step;
    group_prefetch(const uint8_t* begin, size_t bytes, int64_t n_steps)
        : p(reinterpret_cast<const char*>(begin)), end(p + bytes),
          step((bytes / size_t(n_steps > 0 ? n_steps : 1) + 127) & ~size_t(63)) {}
    void next() {
        for (size_t o = 0; o < step && p < end; o += 64, p += 64) _mm_prefetch(p, _MM_HINT_T0);
    }
};
// Only the decode kernels (one x row, 8 weight rows) prefetch: in prefill the weights of a
// group are reused by every x row and stay in cache.
template <int RX, int RW>
constexpr bool gemv_prefetch = RX == 1 && RW == 8;

// ---- float weights: y[i][o] = Σ_k w[o][k] · x[i][k] with 16 lanes of FMA ------------------
// Each loader widens 16 weights at w + k (elements) to f32; the masked form reads only the
// first `mask` lanes (row tails), so no read goes past the row.

struct load_f32 {
    static __m512 load(const uint8_t* w, int64_t k) {
        return _mm512_loadu_ps(reinterpret_cast<const float*>(w) + k);
    }
    static __m512 load_mask(const uint8_t* w, int64_t k, __mmask16 m) {
        return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(w) + k);
    }
};

struct load_f16 {
    static __m512 load(const uint8_t* w, int64_t k) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 2 * k)));
    }
    static __m512 load_mask(const uint8_t* w, int64_t k, __mmask16 m) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + 2 * k));
    }
};

// bf16 is the top half of an f32: zero-extend to 32 bits and shift into place (exact).
struct load_bf16 {
    static __m512 load(const uint8_t* w, int64_t k) {
        __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 2 * k));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static __m512 load_mask(const uint8_t* w, int64_t k, __mmask16 m) {
        __m256i h = _mm256_maskz_loadu_epi16(m, w + 2 * k);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
};

// Micro-kernel: RX x rows × RW weight rows, full n_in. Every weight vector loaded (and
// converted) is used RX times, every x vector RW times: RX·RW FMAs per RX + RW loads.
template <class L, int RX, int RW>
void float_micro(const gemm_tile& t, int64_t i0, int64_t o0) {
    const auto* x = static_cast<const float*>(t.x) + i0 * t.x_stride;
    const uint8_t* w = t.w + size_t(o0) * t.w_row_bytes;
    __m512 acc[RX][RW];
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) acc[i][r] = _mm512_setzero_ps();
    group_prefetch pf(w + size_t(RW) * t.w_row_bytes, size_t(RW) * t.w_row_bytes, t.n_in / 16);
    int64_t k = 0;
    for (; k + 16 <= t.n_in; k += 16) {
        if constexpr (gemv_prefetch<RX, RW>) pf.next();
        __m512 wv[RW];
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) wv[r] = L::load(w + size_t(r) * t.w_row_bytes, k);
#pragma GCC unroll 4
        for (int i = 0; i < RX; ++i) {
            __m512 xv = _mm512_loadu_ps(x + i * t.x_stride + k);
#pragma GCC unroll 8
            for (int r = 0; r < RW; ++r) acc[i][r] = _mm512_fmadd_ps(wv[r], xv, acc[i][r]);
        }
    }
    if (k < t.n_in) {
        __mmask16 m = tail_mask(t.n_in - k);
        __m512 wv[RW];
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) wv[r] = L::load_mask(w + size_t(r) * t.w_row_bytes, k, m);
#pragma GCC unroll 4
        for (int i = 0; i < RX; ++i) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + i * t.x_stride + k);
#pragma GCC unroll 8
            for (int r = 0; r < RW; ++r) acc[i][r] = _mm512_fmadd_ps(wv[r], xv, acc[i][r]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) t.y[(i0 + i) * t.ldy + o0 + r] = _mm512_reduce_add_ps(acc[i][r]);
}

// ---- quantized weights: integer block dots with VNNI ----------------------------------------
// A block of 32 weights becomes 32 unsigned codes u (one ymm) with value w = (u - c) · dw;
// the activations are 32 signed bytes qx with scale dx and sum sx. vpdpbusd multiplies
// unsigned × signed bytes and adds groups of 4 into 8 int32 lanes, starting from a bias
// vector holding -c·sx in lane 0, so the lanes sum to Σ (u - c)·qx exactly.

struct codes_q8_0 {  // u = q + 128 (flip the sign bit), c = 128
    static constexpr int block_bytes = 34;
    static constexpr int32_t offset = 128;
    static __m256i codes(const uint8_t* blk) {
        __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
        return _mm256_xor_si256(q, _mm256_set1_epi8(char(0x80)));
    }
};

// Micro-kernel (q8_0): RX x rows × RW weight rows. Per block: RW weight decodes shared by
// RX rows, then per (x row, weight row) pair one vpdpbusd, one convert, one scale, one FMA.
template <class C, int RX, int RW>
void quant_micro(const gemm_tile& t, int64_t i0, int64_t o0) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    const int64_t nb = t.n_in / 32;
    const uint8_t* w = t.w + size_t(o0) * t.w_row_bytes;
    __m256 acc[RX][RW];
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) acc[i][r] = _mm256_setzero_ps();
    group_prefetch pf(w + size_t(RW) * t.w_row_bytes, size_t(RW) * t.w_row_bytes, nb);
    for (int64_t b = 0; b < nb; ++b) {
        if constexpr (gemv_prefetch<RX, RW>) pf.next();
        __m256i wq[RW];
        __m256 dw[RW];
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) {
            const uint8_t* blk = w + size_t(r) * t.w_row_bytes + size_t(b) * C::block_bytes;
            wq[r] = C::codes(blk);
            dw[r] = _mm256_set1_ps(_cvtsh_ss(*reinterpret_cast<const uint16_t*>(blk)));
        }
#pragma GCC unroll 4
        for (int i = 0; i < RX; ++i) {
            const int64_t row = i0 + i;
            __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + row * t.n_in + b * 32));
            const int32_t sx = x.s[row * nb + b];
            __m256i bias = _mm256_setzero_si256();
            if constexpr (C::offset != 0) bias = _mm256_castsi128_si256(_mm_cvtsi32_si128(-C::offset * sx));
            __m256 dx = _mm256_set1_ps(x.d[row * nb + b]);
#pragma GCC unroll 8
            for (int r = 0; r < RW; ++r) {
                __m256 p = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(bias, wq[r], xq));
                acc[i][r] = _mm256_fmadd_ps(_mm256_mul_ps(p, dw[r]), dx, acc[i][r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) t.y[(i0 + i) * t.ldy + o0 + r] = hsum256(acc[i][r]);
}

// Nibble formats, two blocks per ymm. One ymm holds the 16 code bytes of block b (low
// half) and of block b+1 (high half); masking gives the low nibbles [b 0..15 | b+1 0..15]
// and shifting the high nibbles [b 16..31 | b+1 16..31]. The x bytes are gathered in the same
// order (amortized over the RW weight rows), so after two vpdpbusd lanes 0-3 hold block b's dot
// and lanes 4-7 block b+1's, and one convert / scale / FMA serves both blocks: per pair of
// blocks about 14 vector ops per row instead of 22 for one block at a time.
struct nibble_q4_0 {
    static constexpr int block_bytes = 18, qs_offset = 2;
    static constexpr int32_t offset = 8;
    static constexpr bool has_min = false;
};
struct nibble_q4_1 {
    static constexpr int block_bytes = 20, qs_offset = 4;
    static constexpr int32_t offset = 0;
    static constexpr bool has_min = true;
};

uint16_t load_u16(const uint8_t* p) {
    uint16_t v;
    __builtin_memcpy(&v, p, 2);
    return v;
}

// [f(h0) ×4, f(h1) ×4] from two f16 values.
__m256 pair_halves(uint16_t h0, uint16_t h1) {
    __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(int(uint32_t(h0) | (uint32_t(h1) << 16))));
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(f), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

// [lo ×4, hi ×4] from two floats; [lo, 0, 0, 0, hi, 0, 0, 0] for the lane-0 variant.
__m256 pair_bcast(float lo, float hi) { return _mm256_set_m128(_mm_set1_ps(hi), _mm_set1_ps(lo)); }
__m256 pair_lane0(float lo, float hi) { return _mm256_set_m128(_mm_set_ss(hi), _mm_set_ss(lo)); }
__m256i pair_lane0(int32_t lo, int32_t hi) {
    return _mm256_set_m128i(_mm_cvtsi32_si128(hi), _mm_cvtsi32_si128(lo));
}

// Blocks b and b+1 (or only b when !two: the high half is zeroed and contributes nothing).
template <class C, int RX, int RW, bool two>
inline void nibble_step(const gemm_tile& t, const q8_rows& x, int64_t i0, const uint8_t* w, int64_t b,
                        __m256 (&acc)[RX][RW]) {
    const int64_t nb = t.n_in / 32;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i lo[RW], hi[RW];
    __m256 dw[RW], mw[RW];
#pragma GCC unroll 8
    for (int r = 0; r < RW; ++r) {
        const uint8_t* b0 = w + size_t(r) * t.w_row_bytes + size_t(b) * C::block_bytes;
        const uint8_t* b1 = b0 + C::block_bytes;
        const auto* q0 = reinterpret_cast<const __m128i*>(b0 + C::qs_offset);
        __m256i v = two ? _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(b1 + C::qs_offset), q0)
                        : _mm256_zextsi128_si256(_mm_loadu_si128(q0));
        lo[r] = _mm256_and_si256(v, m4);
        hi[r] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        dw[r] = pair_halves(load_u16(b0), two ? load_u16(b1) : 0);
        if constexpr (C::has_min) mw[r] = pair_halves(load_u16(b0 + 2), two ? load_u16(b1 + 2) : 0);
    }
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i) {
        const int64_t row = i0 + i;
        const int8_t* xb = x.qs + row * t.n_in + b * 32;
        const auto* xp = reinterpret_cast<const __m128i*>(xb);
        __m256i xlo = two ? _mm256_loadu2_m128i(xp + 2, xp) : _mm256_zextsi128_si256(_mm_loadu_si128(xp));
        __m256i xhi = two ? _mm256_loadu2_m128i(xp + 3, xp + 1) : _mm256_zextsi128_si256(_mm_loadu_si128(xp + 1));
        const int32_t s0 = x.s[row * nb + b], s1 = two ? x.s[row * nb + b + 1] : 0;
        const __m256 dx = pair_bcast(x.d[row * nb + b], two ? x.d[row * nb + b + 1] : 0.0f);
        __m256i bias = _mm256_setzero_si256();
        if constexpr (C::offset != 0) bias = pair_lane0(-C::offset * s0, -C::offset * s1);
        __m256 sx = _mm256_setzero_ps();
        if constexpr (C::has_min) sx = pair_lane0(float(s0), float(s1));
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) {
            __m256i p = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(bias, lo[r], xlo), hi[r], xhi);
            __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(p), dw[r]);
            if constexpr (C::has_min) f = _mm256_fmadd_ps(mw[r], sx, f);
            acc[i][r] = _mm256_fmadd_ps(f, dx, acc[i][r]);
        }
    }
}

template <class C, int RX, int RW>
void nibble_micro(const gemm_tile& t, int64_t i0, int64_t o0) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    const int64_t nb = t.n_in / 32;
    const uint8_t* w = t.w + size_t(o0) * t.w_row_bytes;
    __m256 acc[RX][RW];
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) acc[i][r] = _mm256_setzero_ps();
    group_prefetch pf(w + size_t(RW) * t.w_row_bytes, size_t(RW) * t.w_row_bytes, nb / 2);
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        if constexpr (gemv_prefetch<RX, RW>) pf.next();
        nibble_step<C, RX, RW, true>(t, x, i0, w, b, acc);
    }
    if (b < nb) nibble_step<C, RX, RW, false>(t, x, i0, w, b, acc);
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) t.y[(i0 + i) * t.ldy + o0 + r] = hsum256(acc[i][r]);
}

// ---- tile drivers ----------------------------------------------------------------------------
// Walks the tile in RW-row weight groups (outer, so each group stays in L1/L2) and RX-row x
// groups (inner), with smaller kernels for the edges. Decode (m = 1) uses wider weight
// groups: more independent accumulators and loads in flight.

template <class P, int RX, int RW>
struct float_kernel {
    static void run(const gemm_tile& t, int64_t i0, int64_t o0) { float_micro<P, RX, RW>(t, i0, o0); }
};
template <class P, int RX, int RW>
struct nibble_kernel {
    static void run(const gemm_tile& t, int64_t i0, int64_t o0) { nibble_micro<P, RX, RW>(t, i0, o0); }
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
        for (; o + 8 <= t.n_o; o += 8) K<P, 1, 8>::run(t, 0, o);
    }
    for (; o + 4 <= t.n_o; o += 4) x_rows<K, P, 4>(t, o);
    for (; o < t.n_o; ++o) x_rows<K, P, 1>(t, o);
}

void gemm_f32(const gemm_tile& t) { drive<float_kernel, load_f32>(t); }
void gemm_f16(const gemm_tile& t) { drive<float_kernel, load_f16>(t); }
void gemm_bf16(const gemm_tile& t) { drive<float_kernel, load_bf16>(t); }
void gemm_q8_0(const gemm_tile& t) { drive<quant_kernel, codes_q8_0>(t); }
void gemm_q4_0(const gemm_tile& t) { drive<nibble_kernel, nibble_q4_0>(t); }
void gemm_q4_1(const gemm_tile& t) { drive<nibble_kernel, nibble_q4_1>(t); }

// ---- activation quantization and dot ---------------------------------------------------------

// Same arithmetic as the scalar path: d = amax / 127, q = RNE(x · 127 / amax) (vcvtps2dq
// rounds to nearest even under the default MXCSR), so all paths produce identical bytes.
void quantize_q8_row(const float* x, int64_t n, int8_t* qs, float* d, int32_t* s) {
    const __m512 sign_off = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    for (int64_t b = 0; b < n / 32; ++b) {
        __m512 v0 = _mm512_loadu_ps(x + b * 32);
        __m512 v1 = _mm512_loadu_ps(x + b * 32 + 16);
        __m512 a = _mm512_max_ps(_mm512_and_ps(v0, sign_off), _mm512_and_ps(v1, sign_off));
        float amax = _mm512_reduce_max_ps(a);
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * 32), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * 32 + 16), _mm512_cvtsepi32_epi8(q1));
        d[b] = amax / 127.0f;
        s[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

float dot_f32(const float* a, const float* b, int64_t n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
}

// e^x for 16 lanes: x = n·ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial (relative
// error ~2e-7), then scaled by 2^n with vscalefps, which saturates to inf / 0 for huge |x|
// (no exponent-field overflow to handle) and passes NaN through.
__m512 exp512(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(100.0f)), _mm512_set1_ps(-110.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

// silu(g)·u = g·u / (1 + e^-g); e^-g saturates to inf for g → -inf, giving -0 as the scalar
// path does. (The clamp at ±100/110 keeps vscalefps in range; e^110 is already inf in float.)
void swiglu(const float* gate, const float* up, float* out, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i), u = _mm512_loadu_ps(up + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_storeu_ps(out + i, _mm512_div_ps(_mm512_mul_ps(g, u), _mm512_add_ps(one, e)));
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_mask_storeu_ps(out + i, m, _mm512_div_ps(_mm512_mul_ps(g, u), _mm512_add_ps(one, e)));
    }
}

constexpr kernel_table table{gemm_f32,  gemm_f16,  gemm_bf16,       gemm_q8_0,
                             gemm_q4_0, gemm_q4_1, quantize_q8_row, dot_f32, swiglu,
                             gemm_q4_k_avx512, gemm_q5_k_avx512, gemm_q6_k_avx512, quantize_q8k_row_avx512};

}  // namespace

const kernel_table* kernels_avx512() { return &table; }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
const kernel_table* kernels_avx512() { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
