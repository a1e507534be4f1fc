// AVX-512 (VNNI) k-quant kernels: the shared 256-bit kernels (matmul_kquants_simd.h) with the
// scaled accumulation done by vpdpwssd (int16 pairs × int16 scale, added into int32 lanes), a
// 4 x rows × 4 weight rows prefill tile and a row-by-row GEMV. 256-bit vectors: on Zen 4
// a 512-bit op takes both 256-bit halves, so wider vectors would not add throughput here.
// Compiled with KVSERVE_AVX512_FLAGS; only called when dispatch.cpp found the CPU supports them.
#include "kernels/cpu/matmul_kquants.h"

// Same ISA guard as matmul_avx512.cpp.
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

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/matmul_kquants_simd.h"

namespace kvs::cpu::detail {

namespace {

struct ops_vnni {
    static constexpr int rw = 4;  // weight rows per prefill tile (x rows: 4)
    static __m256i dot(__m256i acc, __m256i p16, __m256i scale) { return _mm256_dpwssd_epi32(acc, p16, scale); }
};

// ---- prefill with x rows in lanes ----------------------------------------------------------------
// For m >= 16 the AVX-512 path turns the tile around: 16 activation rows lie in the 16 int32
// lanes of a zmm (their q8 bytes transposed once per tile, 4 consecutive bytes per lane), and
// the weight codes of one row are decoded once per super-block into bytes and broadcast 4 at
// a time. One vpdpbusd then does 64 multiply-adds for 16 outputs with no horizontal sums, and
// the sub-block scale is one vpmulld per sub-block and lane group. With the activations as the
// unsigned operand (q + 128), Σ (q + 128)·code = Σ q·code + 128 Σ code: the second term is a
// per-(row, super-block) integer (`corr`), computed with the codes. Integer results per
// super-block equal the scalar path's; the float scaling is the same as the other paths.

// Activation rows [0, m) of a tile in lane order, 16 rows per group (rows past m are zero).
struct xl_rows {
    std::vector<uint32_t> q;   // (n_groups, n_in / 4, 16)   4 bytes q + 128 per lane
    std::vector<float> d;      // (n_groups, n_in / 256, 16) scales
    std::vector<int32_t> bp;   // (n_groups, n_in / 32, 16)  sums per 16, as int16 pairs
    int64_t n_groups = 0;
};

void xl_build(const q8k_rows& x, int64_t m, int64_t n_in, xl_rows& out) {
    const int64_t ng = (m + 15) / 16, nq = n_in / 4, nb = n_in / qk_k, np = n_in / 32;
    out.n_groups = ng;
    if (out.q.size() < size_t(ng * nq * 16)) out.q.resize(size_t(ng * nq * 16));
    if (out.d.size() < size_t(ng * nb * 16)) out.d.resize(size_t(ng * nb * 16));
    if (out.bp.size() < size_t(ng * np * 16)) out.bp.resize(size_t(ng * np * 16));
    // The bytes: one gather per 4 columns of 16 rows (rows past m read row 0 and are masked).
    const __m512i flip = _mm512_set1_epi32(int(0x80808080u));
    for (int64_t g = 0; g < ng; ++g) {
        const int64_t n_rows = std::min<int64_t>(16, m - 16 * g);
        const __mmask16 live = __mmask16((1u << n_rows) - 1);
        const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32(int(nq)));
        const int8_t* base = x.qs + 16 * g * n_in;
        uint32_t* q = out.q.data() + g * nq * 16;
        for (int64_t k = 0; k < nq; ++k) {
            const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, idx, base + 4 * k, 4);
            _mm512_storeu_si512(q + k * 16, _mm512_xor_si512(v, flip));  // masked rows: q = 0
        }
    }
    for (int64_t i = 0; i < ng * 16; ++i) {
        const int64_t g = i / 16, l = i % 16;
        float* d = out.d.data() + g * nb * 16 + l;
        int32_t* bp = out.bp.data() + g * np * 16 + l;
        if (i >= m) {
            for (int64_t b = 0; b < nb; ++b) d[b * 16] = 0.0f;
            for (int64_t p = 0; p < np; ++p) bp[p * 16] = 0;
            continue;
        }
        for (int64_t b = 0; b < nb; ++b) d[b * 16] = x.d[i * nb + b];
        const int16_t* bs = x.bsums + i * nb * 16;
        for (int64_t p = 0; p < np; ++p) bp[p * 16] = int32_t(uint32_t(uint16_t(bs[2 * p])) | (uint32_t(uint16_t(bs[2 * p + 1])) << 16));
    }
}

// One weight row's super-block, decoded for the lane kernel: codes as bytes in element order,
// integer sub-block scales, the dwords that vpdpwssd multiplies the int16 pairs of 16-sums by
// (q4_K/q5_K: the min of the 32-element sub-block in both halves; q6_K: the two scales), and
// corr = 128 Σ_j scale_j Σ codes_j.
template <class F>
struct xl_block {
    static constexpr int n_sub = std::is_same_v<F, fmt_q6_k> ? 16 : 8;
    static constexpr int sub_len = qk_k / n_sub;
    alignas(64) uint8_t codes[qk_k];
    alignas(64) int32_t scale[16];
    alignas(64) uint32_t pair[8];
    int32_t corr;
    float d, dmin;

    template <int c>
    KQ_INLINE void chunk(F& f, const uint8_t* blk, __m256i& sums) {
        const __m256i q = f.template codes<c>(blk);
        _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32 * c), q);
        // Σ scale·code over the chunk, with the same dup-dword scales as the row kernel.
        sums = _mm256_dpwssd_epi32(sums, _mm256_maddubs_epi16(q, _mm256_set1_epi8(1)), f.template scale<c>());
    }
    KQ_INLINE void decode(const uint8_t* blk) {
        F f;
        f.prepare(blk);
        __m256i sums = _mm256_setzero_si256();
        chunk<0>(f, blk, sums);
        chunk<1>(f, blk, sums);
        chunk<2>(f, blk, sums);
        chunk<3>(f, blk, sums);
        chunk<4>(f, blk, sums);
        chunk<5>(f, blk, sums);
        chunk<6>(f, blk, sums);
        chunk<7>(f, blk, sums);
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
        corr = 128 * _mm_cvtsi128_si32(s);
        d = f.d;
        dmin = f.dmin;
        if constexpr (std::is_same_v<F, fmt_q6_k>) {
            _mm512_store_si512(scale, _mm512_cvtepi16_epi32(f.sc16));
            _mm256_store_si256(reinterpret_cast<__m256i*>(pair), f.sc16);
        } else {
            const __m256i sc = _mm256_load_si256(reinterpret_cast<const __m256i*>(f.sc_dup));
            _mm256_store_si256(reinterpret_cast<__m256i*>(scale), _mm256_and_si256(sc, _mm256_set1_epi32(0xFFFF)));
            _mm256_store_si256(reinterpret_cast<__m256i*>(pair), f.mn);
        }
    }
};

// XG groups of 16 x rows × RW weight rows, full n_in.
template <class F, int XG, int RW>
void xl_micro(const gemm_tile& t, const xl_rows& xl, int64_t g0, int64_t o0) {
    using block = typename F::block;
    using xb = xl_block<F>;
    const int64_t nb = t.n_in / qk_k, nq = t.n_in / 4, np = t.n_in / 32;
    const uint8_t* w = t.w + size_t(o0) * t.w_row_bytes;
    __m512 acc[XG][RW];
#pragma GCC unroll 4
    for (int g = 0; g < XG; ++g)
#pragma GCC unroll 2
        for (int r = 0; r < RW; ++r) acc[g][r] = _mm512_setzero_ps();
    xb blk[RW];
    for (int64_t b = 0; b < nb; ++b) {
#pragma GCC unroll 2
        for (int r = 0; r < RW; ++r) blk[r].decode(w + size_t(r) * t.w_row_bytes + size_t(b) * sizeof(block));
#pragma GCC unroll 4
        for (int g = 0; g < XG; ++g) {
            const uint32_t* xq = xl.q.data() + ((g0 + g) * nq + b * (qk_k / 4)) * 16;
            __m512i isb[RW];
#pragma GCC unroll 2
            for (int r = 0; r < RW; ++r) isb[r] = _mm512_setzero_si512();
            for (int j = 0; j < xb::n_sub; ++j) {
                __m512i isum[RW];
#pragma GCC unroll 2
                for (int r = 0; r < RW; ++r) isum[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int k = 0; k < xb::sub_len / 4; ++k) {
                    const __m512i xv = _mm512_loadu_si512(xq + (j * (xb::sub_len / 4) + k) * 16);
#pragma GCC unroll 2
                    for (int r = 0; r < RW; ++r) {
                        int32_t c;
                        std::memcpy(&c, blk[r].codes + j * xb::sub_len + 4 * k, 4);
                        isum[r] = _mm512_dpbusd_epi32(isum[r], xv, _mm512_set1_epi32(c));
                    }
                }
#pragma GCC unroll 2
                for (int r = 0; r < RW; ++r)
                    isb[r] = _mm512_add_epi32(isb[r], _mm512_mullo_epi32(isum[r], _mm512_set1_epi32(blk[r].scale[j])));
            }
            const int32_t* bp = xl.bp.data() + ((g0 + g) * np + b * 8) * 16;
            const __m512 dx = _mm512_loadu_ps(xl.d.data() + ((g0 + g) * nb + b) * 16);
#pragma GCC unroll 2
            for (int r = 0; r < RW; ++r) {
                __m512i ip = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int p = 0; p < 8; ++p)
                    ip = _mm512_dpwssd_epi32(ip, _mm512_loadu_si512(bp + p * 16), _mm512_set1_epi32(int(blk[r].pair[p])));
                __m512i total = _mm512_sub_epi32(isb[r], _mm512_set1_epi32(blk[r].corr));
                if constexpr (F::has_min) {
                    acc[g][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(dx, _mm512_set1_ps(blk[r].d)), acc[g][r]);
                    acc[g][r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ip), _mm512_mul_ps(dx, _mm512_set1_ps(blk[r].dmin)), acc[g][r]);
                } else {
                    total = _mm512_sub_epi32(total, _mm512_slli_epi32(ip, 5));  // the -32 offset of q6_K codes
                    acc[g][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(dx, _mm512_set1_ps(blk[r].d)), acc[g][r]);
                }
            }
        }
    }
    alignas(64) float out[16];
#pragma GCC unroll 4
    for (int g = 0; g < XG; ++g) {
#pragma GCC unroll 2
        for (int r = 0; r < RW; ++r) {
            _mm512_store_ps(out, acc[g][r]);
            for (int l = 0; l < 16; ++l) {
                const int64_t row = (g0 + g) * 16 + l;
                if (row < t.m) t.y[row * t.ldy + o0 + r] = out[l];
            }
        }
    }
}

template <class F, int RW>
void xl_groups(const gemm_tile& t, const xl_rows& xl, int64_t o0) {
    int64_t g = 0;
    for (; g + 4 <= xl.n_groups; g += 4) xl_micro<F, 4, RW>(t, xl, g, o0);
    switch (xl.n_groups - g) {
        case 3: xl_micro<F, 3, RW>(t, xl, g, o0); break;
        case 2: xl_micro<F, 2, RW>(t, xl, g, o0); break;
        case 1: xl_micro<F, 1, RW>(t, xl, g, o0); break;
        default: break;
    }
}

// Below 16 x rows the lanes would be mostly empty: the row kernels serve those tiles.
constexpr int64_t xl_min_rows = 16;

template <class F>
void gemm_kquant(const gemm_tile& t) {
    if (t.m < xl_min_rows) {
        kq_drive<F, ops_vnni>(t);
        return;
    }
    static thread_local xl_rows xl;
    xl_build(*static_cast<const q8k_rows*>(t.x), t.m, t.n_in, xl);
    int64_t o = 0;
    for (; o + 2 <= t.n_o; o += 2) xl_groups<F, 2>(t, xl, o);
    if (o < t.n_o) xl_groups<F, 1>(t, xl, o);
}

}  // namespace

void gemm_q4_k_avx512(const gemm_tile& t) { gemm_kquant<fmt_scale_min<false>>(t); }
void gemm_q5_k_avx512(const gemm_tile& t) { gemm_kquant<fmt_scale_min<true>>(t); }
void gemm_q6_k_avx512(const gemm_tile& t) { gemm_kquant<fmt_q6_k>(t); }
void quantize_q8k_row_avx512(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums) {
    kq_quantize_q8k_row(x, n, qs, d, bsums);
}

}  // namespace kvs::cpu::detail

#endif
