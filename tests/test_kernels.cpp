// CPU kernels against their float64 references, for every dtype and every ISA path that is
// compiled and supported here; plus the thread pool they run on.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/cpu/interleave.h"
#include "kernels/cpu/ops.h"
#include "test_util.h"

namespace kvs::cpu {
namespace {

std::vector<isa> supported_isas() {
    std::vector<isa> out;
    for (isa i : {isa::scalar, isa::avx2, isa::avx512}) {
        if (isa_supported(i)) out.push_back(i);
    }
    return out;
}

// Restores the default dispatch even when an assertion returns early.
struct isa_scope {
    explicit isa_scope(isa i) { isa_override(i); }
    ~isa_scope() { isa_reset(); }
};

// ---- dispatch ---------------------------------------------------------------------------------

TEST(Isa, ScalarAlwaysAvailableAndOverrideWorks) {
    EXPECT_TRUE(isa_compiled(isa::scalar));
    EXPECT_TRUE(isa_supported(isa::scalar));
    for (isa i : supported_isas()) {
        isa_override(i);
        EXPECT_EQ(isa_active(), i) << isa_name(i);
    }
    isa_reset();
    isa best = supported_isas().back();
    EXPECT_EQ(isa_active(), best);
    EXPECT_STREQ(isa_name(isa::avx512), "avx512");
#if defined(__x86_64__)
    EXPECT_TRUE(isa_compiled(isa::avx2));
    EXPECT_TRUE(isa_compiled(isa::avx512));
#endif
}

// ---- matmul -------------------------------------------------------------------------------------

struct weights {
    std::vector<uint8_t> bytes;  // (n_out, row_bytes)
    weight_view view;
};

weights make_weights(dtype t, int64_t n_out, int64_t n_in, uint64_t seed) {
    weights w;
    std::vector<float> f = test::random_floats(n_out * n_in, seed, 0.5f);
    size_t row_bytes = dtype_row_bytes(t, n_in);
    w.bytes.resize(size_t(n_out) * row_bytes);
    for (int64_t o = 0; o < n_out; ++o) {
        EXPECT_TRUE(quantize_row(t, f.data() + o * n_in, w.bytes.data() + size_t(o) * row_bytes, n_in));
    }
    w.view = {w.bytes.data(), t, n_out, n_in};
    return w;
}

// Tolerance of matmul against ref::matmul (which uses the dequantized weights and the exact
// x): float weights only differ by float accumulation; quantized weights also quantize x to
// 8 bits per block of 32 (relative noise ≈ 0.4% for uniform data).
double tolerance(dtype t) {
    switch (t) {
        case dtype::f32: return 1e-6;
        case dtype::f16:
        case dtype::bf16: return 1e-5;
        default: return 1e-2;
    }
}

struct shape {
    int64_t n_in, n_out;
};

std::vector<shape> shapes_for(dtype t) {
    if (dtype_info(t).block_size == qk_k) return {{256, 37}, {768, 19}, {512, 5}, {256, 130}};
    std::vector<shape> s = {{96, 37}, {544, 19}, {32, 5}, {256, 130}};
    if (dtype_info(t).block_size == 1) {
        s.push_back({37, 23});  // row tails shorter than a vector
        s.push_back({100, 9});
    }
    return s;
}

// Whether matmul of these weights and rows takes the bf16 dot-product path (f16/bf16 weights,
// m >= 2, AVX-512 with AVX512-BF16 active): activations (and f16 weights) rounded to bf16.
bool uses_bf16_dot(dtype t, int64_t m) {
    return (t == dtype::f16 || t == dtype::bf16) && m >= 2 && isa_active() == isa::avx512;
}

double round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Float64 matmul of the bf16-rounded operands.
std::vector<double> ref_bf16_dot(const weight_view& w, const float* x, int64_t m) {
    std::vector<float> row(size_t(w.n_in));
    std::vector<double> y(size_t(m * w.n_out));
    const size_t row_bytes = dtype_row_bytes(w.type, w.n_in);
    for (int64_t o = 0; o < w.n_out; ++o) {
        dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(o) * row_bytes, row.data(), w.n_in);
        for (int64_t i = 0; i < m; ++i) {
            double acc = 0;
            for (int64_t k = 0; k < w.n_in; ++k) acc += round_bf16(row[size_t(k)]) * round_bf16(x[i * w.n_in + k]);
            y[size_t(i * w.n_out + o)] = acc;
        }
    }
    return y;
}

class MatmulTest : public ::testing::TestWithParam<dtype> {};

TEST_P(MatmulTest, MatchesReferenceOnEveryIsa) {
    const dtype t = GetParam();
    ASSERT_TRUE(matmul_supported(t));
    for (shape sh : shapes_for(t)) {
        weights w = make_weights(t, sh.n_out, sh.n_in, 11 + uint64_t(sh.n_in));
        for (int64_t m : {1, 3, 7, 64, 130}) {
            std::vector<float> x = test::random_floats(m * sh.n_in, 5 + uint64_t(m), 2.0f);
            std::vector<float> want(size_t(m * sh.n_out));
            ref::matmul(w.view, x.data(), m, want.data());
            std::vector<float> scalar_y;
            for (isa i : supported_isas()) {
                isa_scope scope(i);
                for (int n_threads : {1, 2}) {
                    thread_pool pool(n_threads);
                    std::vector<float> y(size_t(m * sh.n_out), -12345.0f);
                    matmul(w.view, x.data(), m, y.data(), pool);
                    if (uses_bf16_dot(t, m)) {
                        // Own precision contract: against the same products in bf16, and
                        // within bf16 rounding of the exact result.
                        std::vector<double> want_bf16 = ref_bf16_dot(w.view, x.data(), m);
                        EXPECT_LE(test::nmse_norm(y.data(), want_bf16.data(), m * sh.n_out), 1e-5)
                            << dtype_name(t) << " bf16 dot, m " << m << " n_in " << sh.n_in;
                        EXPECT_LE(test::nmse_norm(y.data(), want.data(), m * sh.n_out), 5e-3)
                            << dtype_name(t) << " bf16 dot, m " << m << " n_in " << sh.n_in;
                        continue;
                    }
                    double err = test::nmse_norm(y.data(), want.data(), m * sh.n_out);
                    EXPECT_LE(err, tolerance(t))
                        << dtype_name(t) << " isa " << isa_name(i) << " threads " << n_threads
                        << " m " << m << " n_in " << sh.n_in << " n_out " << sh.n_out;
                    // Every path computes the same integer block dots (quantized) or the same
                    // products (float), so paths agree far more closely than with the
                    // reference: this catches a wrong block or lane that the looser
                    // quantization tolerance could hide.
                    if (scalar_y.empty()) {
                        scalar_y = y;
                    } else {
                        EXPECT_LE(test::nmse_norm(y.data(), scalar_y.data(), m * sh.n_out), 2e-6)
                            << dtype_name(t) << " isa " << isa_name(i) << " vs scalar, m " << m
                            << " n_in " << sh.n_in;
                    }
                }
            }
        }
    }
}

// matmul_multi and matmul_swiglu give exactly the values of separate matmul (and swiglu)
// calls, on every ISA, including mixed dtypes (a float and a quantized weight share x).
TEST_P(MatmulTest, MultiAndSwigluEqualSeparateCalls) {
    const dtype t = GetParam();
    const int64_t n_in = 256;
    weights wa = make_weights(t, 70, n_in, 21), wb = make_weights(t, 16, n_in, 22), wc = make_weights(dtype::f32, 33, n_in, 23);
    weights wu = make_weights(t, 70, n_in, 24);
    for (int64_t m : {1, 5, 70}) {
        std::vector<float> x = test::random_floats(m * n_in, 31 + uint64_t(m), 2.0f);
        for (isa i : supported_isas()) {
            isa_scope scope(i);
            for (int n_threads : {1, 2, 3}) {
                thread_pool pool(n_threads);
                const weight_view views[3] = {wa.view, wb.view, wc.view};
                std::vector<float> ya(size_t(m * 70)), yb(size_t(m * 16)), yc(size_t(m * 33));
                float* const ys[3] = {ya.data(), yb.data(), yc.data()};
                matmul_multi(views, 3, x.data(), m, ys, pool);
                for (int j = 0; j < 3; ++j) {
                    std::vector<float> want(size_t(m * views[j].n_out));
                    matmul(views[j], x.data(), m, want.data(), pool);
                    for (size_t e = 0; e < want.size(); ++e) ASSERT_EQ(ys[j][e], want[e]) << isa_name(i) << " weight " << j;
                }
                std::vector<float> g(size_t(m * 70)), u(size_t(m * 70)), out(size_t(m * 70));
                matmul_swiglu(wa.view, wu.view, x.data(), m, g.data(), u.data(), out.data(), pool);
                std::vector<float> g2(g.size()), u2(u.size()), want(g.size());
                matmul(wa.view, x.data(), m, g2.data(), pool);
                matmul(wu.view, x.data(), m, u2.data(), pool);
                swiglu(g2.data(), u2.data(), want.data(), m * 70);
                for (size_t e = 0; e < want.size(); ++e) ASSERT_EQ(out[e], want[e]) << isa_name(i);
                // In place (out aliases the gate scratch), as the forward pass uses it.
                matmul_swiglu(wa.view, wu.view, x.data(), m, g.data(), u.data(), g.data(), pool);
                for (size_t e = 0; e < want.size(); ++e) ASSERT_EQ(g[e], want[e]) << isa_name(i);
                // Without y_up (the up tiles in the matmul's scratch), as the forward pass uses it.
                std::fill(g.begin(), g.end(), 0.0f);
                matmul_swiglu(wa.view, wu.view, x.data(), m, g.data(), nullptr, g.data(), pool);
                for (size_t e = 0; e < want.size(); ++e) ASSERT_EQ(g[e], want[e]) << isa_name(i) << " (no y_up)";
            }
        }
    }
    // Mismatched n_in: NaN, not a silent wrong answer.
    weights bad = make_weights(t, 4, 2 * n_in, 25);
    const weight_view views[2] = {wa.view, bad.view};
    std::vector<float> y0(70), y1(4);
    float* const ys[2] = {y0.data(), y1.data()};
    thread_pool pool(1);
    std::vector<float> x = test::random_floats(n_in, 3, 1.0f);
    matmul_multi(views, 2, x.data(), 1, ys, pool);
    EXPECT_TRUE(std::isnan(y0[0]) && std::isnan(y1[3]));
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, MatmulTest,
                         ::testing::Values(dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0, dtype::q4_0,
                                           dtype::q4_1, dtype::q4_k, dtype::q5_k, dtype::q6_k),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// The tolerance is meaningful: a single flipped weight row is detected.
TEST(Matmul, ToleranceDetectsAWrongRow) {
    weights w = make_weights(dtype::q4_0, 16, 64, 3);
    std::vector<float> x = test::random_floats(64, 4);
    std::vector<float> want(16), y(16);
    ref::matmul(w.view, x.data(), 1, want.data());
    thread_pool pool(1);
    matmul(w.view, x.data(), 1, y.data(), pool);
    EXPECT_LE(test::nmse_norm(y.data(), want.data(), 16), tolerance(dtype::q4_0));
    y[5] = -y[5];
    EXPECT_GT(test::nmse_norm(y.data(), want.data(), 16), tolerance(dtype::q4_0));
}

// Exact small case: integer-valued weights and x that quantize without loss (|x| ≤ 127 with
// max 127 in each block, so d = 1) give exact integer results on every path.
TEST(Matmul, ExactOnLosslessQ8Inputs) {
    const int64_t n_in = 64, n_out = 6, m = 5;
    std::vector<float> wf(size_t(n_out * n_in)), x(size_t(m * n_in));
    for (int64_t i = 0; i < n_out * n_in; ++i) wf[size_t(i)] = float(int(i * 37 % 255) - 127);
    for (int64_t i = 0; i < m * n_in; ++i) x[size_t(i)] = float(int(i * 91 % 255) - 127);
    for (int64_t b = 0; b < (n_out * n_in) / 32; ++b) wf[size_t(b * 32)] = 127.0f;  // d = 1 exactly
    for (int64_t b = 0; b < (m * n_in) / 32; ++b) x[size_t(b * 32)] = 127.0f;
    std::vector<uint8_t> wq(size_t(n_out) * dtype_row_bytes(dtype::q8_0, n_in));
    ASSERT_TRUE(quantize_row(dtype::q8_0, wf.data(), wq.data(), n_out * n_in));
    weight_view wv{wq.data(), dtype::q8_0, n_out, n_in};
    for (isa i : supported_isas()) {
        isa_scope scope(i);
        thread_pool pool(2);
        std::vector<float> y(size_t(m * n_out));
        matmul(wv, x.data(), m, y.data(), pool);
        for (int64_t r = 0; r < m; ++r) {
            for (int64_t o = 0; o < n_out; ++o) {
                double want = 0;
                for (int64_t k = 0; k < n_in; ++k) want += double(wf[size_t(o * n_in + k)]) * x[size_t(r * n_in + k)];
                EXPECT_EQ(y[size_t(r * n_out + o)], float(want)) << isa_name(i) << " " << r << "," << o;
            }
        }
    }
}

// ---- interleaved16 weights ---------------------------------------------------------------------

weights interleaved_copy(const weights& w) {
    weights out;
    out.bytes.resize(interleaved_bytes(w.view));
    out.view = interleave(w.view, out.bytes.data(), 0, w.view.n_out);
    return out;
}

// The documented byte positions (interleave.h), and the exact inverse.
TEST(Interleave, LayoutAndRoundTrip) {
    for (dtype t : {dtype::q4_0, dtype::q8_0, dtype::f16, dtype::bf16}) {
        weights w = make_weights(t, 48, 96, 7);
        ASSERT_TRUE(can_interleave(w.view)) << dtype_name(t);
        weights p = interleaved_copy(w);
        EXPECT_EQ(p.view.layout, weight_layout::interleaved16);
        EXPECT_EQ(p.bytes.size(), w.bytes.size());
        const size_t row_bytes = dtype_row_bytes(t, 96), block_bytes = row_bytes / 3;
        const size_t column_bytes = 16 * block_bytes;
        const size_t header = t == dtype::q4_0 || t == dtype::q8_0 ? 2 : 0;  // the f16 scale
        for (int64_t row : {0, 5, 15, 16, 31, 47}) {
            for (int64_t b = 0; b < 3; ++b) {
                const uint8_t* blk = w.bytes.data() + size_t(row) * row_bytes + size_t(b) * block_bytes;
                const uint8_t* col = p.bytes.data() + size_t(row / 16) * 16 * row_bytes + size_t(b) * column_bytes;
                const int r = int(row % 16);
                for (size_t k = 0; k < header; ++k) EXPECT_EQ(col[header * size_t(r) + k], blk[k]);
                const uint8_t* chunks = col + 16 * header;
                for (size_t k = 0; k < block_bytes - header; ++k) {
                    const uint8_t want = t == dtype::q8_0 ? uint8_t(blk[header + k] ^ 0x80) : blk[header + k];
                    EXPECT_EQ(chunks[64 * (k / 4) + 4 * size_t(r) + k % 4], want) << dtype_name(t) << " row " << row;
                }
            }
        }
        std::vector<uint8_t> back(w.bytes.size());
        deinterleave(p.view, back.data());
        EXPECT_EQ(back, w.bytes) << dtype_name(t);
    }
    EXPECT_FALSE(can_interleave(make_weights(dtype::q4_0, 17, 64, 1).view));  // not 16 rows
    EXPECT_FALSE(can_interleave(make_weights(dtype::bf16, 16, 48, 1).view));  // n_in not 32·k
    EXPECT_FALSE(can_interleave(make_weights(dtype::q4_1, 16, 64, 1).view));  // no kernels
    EXPECT_FALSE(can_interleave(make_weights(dtype::f32, 16, 64, 1).view));
}

// q4_K / q5_K / q6_K: the documented byte positions (interleave.h), and the exact inverse (on
// random bytes too, so that every scale, min and high-bit pattern round-trips).
TEST(Interleave, KQuantLayoutAndRoundTrip) {
    for (dtype t : {dtype::q4_k, dtype::q5_k, dtype::q6_k}) {
        for (bool random_bytes : {false, true}) {
            weights w = make_weights(t, 48, 512, 7);
            if (random_bytes) {
                uint64_t st = 0x1234567ull;
                for (uint8_t& byte : w.bytes) {
                    st = st * 6364136223846793005ull + 1442695040888963407ull;
                    byte = uint8_t(st >> 56);
                }
            }
            ASSERT_TRUE(can_interleave(w.view)) << dtype_name(t);
            weights p = interleaved_copy(w);
            EXPECT_EQ(p.view.layout, weight_layout::interleaved16);
            ASSERT_EQ(p.bytes.size(), w.bytes.size());
            const size_t row_bytes = dtype_row_bytes(t, 512), block_bytes = row_bytes / 2;
            const size_t column_bytes = 16 * block_bytes;
            for (int64_t row : {0, 5, 15, 16, 31, 47}) {
                for (int64_t b = 0; b < 2; ++b) {
                    const uint8_t* blk = w.bytes.data() + size_t(row) * row_bytes + size_t(b) * block_bytes;
                    const uint8_t* col = p.bytes.data() + size_t(row / 16) * 16 * row_bytes + size_t(b) * column_bytes;
                    const size_t r = size_t(row % 16);
                    const std::string where = std::string(dtype_name(t)) + " row " + std::to_string(row);
                    if (t == dtype::q5_k) {  // q4_K's fields, then the qh chunks
                        const auto* q = reinterpret_cast<const block_q5_k*>(blk);
                        EXPECT_EQ(std::memcmp(col + 2 * r, &q->d, 2), 0) << where;
                        EXPECT_EQ(std::memcmp(col + 32 + 2 * r, &q->dmin, 2), 0) << where;
                        for (size_t k = 0; k < 32; ++k)
                            EXPECT_EQ(col[256 + 64 * (k / 4) + 4 * r + k % 4], q->qh[k]) << where;
                        for (size_t k = 0; k < 128; ++k)
                            EXPECT_EQ(col[768 + 64 * (k / 4) + 4 * r + k % 4], q->qs[k]) << where;
                    } else if (t == dtype::q4_k) {
                        const auto* q = reinterpret_cast<const block_q4_k*>(blk);
                        EXPECT_EQ(std::memcmp(col + 2 * r, &q->d, 2), 0) << where;
                        EXPECT_EQ(std::memcmp(col + 32 + 2 * r, &q->dmin, 2), 0) << where;
                        uint8_t sc[8], m[8];
                        kquant_scale_min(q->scales, sc, m);
                        uint32_t high;
                        std::memcpy(&high, col + 192 + 4 * r, 4);
                        for (int j = 0; j < 8; ++j) {
                            const uint8_t lo = col[64 + 16 * size_t(j) + r];
                            EXPECT_EQ((lo & 15) | ((high >> (2 * j)) & 3) << 4, sc[j]) << where;
                            EXPECT_EQ((lo >> 4) | ((high >> (16 + 2 * j)) & 3) << 4, m[j]) << where;
                        }
                        for (size_t k = 0; k < 128; ++k)
                            EXPECT_EQ(col[256 + 64 * (k / 4) + 4 * r + k % 4], q->qs[k]) << where;
                    } else {
                        const auto* q = reinterpret_cast<const block_q6_k*>(blk);
                        EXPECT_EQ(std::memcmp(col + 2 * r, &q->d, 2), 0) << where;
                        for (size_t j = 0; j < 16; ++j) EXPECT_EQ(int8_t(col[32 + 16 * j + r]), q->scales[j]) << where;
                        for (size_t n = 0; n < 128; ++n) {  // ql[n]: half h, A or B, run 2h + q
                            const size_t h = n / 64, ab = n % 64 / 32, l = n % 32;
                            const size_t pos = 288 + 768 * (2 * h + l / 16) + 64 * (4 * (1 + ab) + l % 16 / 4);
                            EXPECT_EQ(col[pos + 4 * r + n % 4], q->ql[n]) << where;
                        }
                        for (size_t n = 0; n < 64; ++n) {
                            const size_t h = n / 32, l = n % 32;
                            const size_t pos = 288 + 768 * (2 * h + l / 16) + 64 * (l % 16 / 4);
                            EXPECT_EQ(col[pos + 4 * r + n % 4], q->qh[n]) << where;
                        }
                    }
                }
            }
            std::vector<uint8_t> back(w.bytes.size());
            deinterleave(p.view, back.data());
            EXPECT_EQ(back, w.bytes) << dtype_name(t);
        }
    }
    EXPECT_FALSE(can_interleave(weight_view{nullptr, dtype::q4_k, 16, 288}));  // n_in not 256·k
    EXPECT_FALSE(can_interleave(make_weights(dtype::q6_k, 8, 256, 1).view));  // not 16 rows
    EXPECT_FALSE(can_interleave(weight_view{nullptr, dtype::q5_k, 16, 384}));  // n_in not 256·k
    EXPECT_FALSE(can_interleave(make_weights(dtype::q4_1, 16, 256, 1).view));  // no kernels
}

// Interleaved weights give the row-major results: to rounding of the reference on every ISA
// (f16/bf16 rows through bf16 dot products: to the bf16-rounded reference), and (same integer
// block dots or products, same float order) bit-exactly on the portable path.
TEST(Interleave, MatmulMatchesRowMajorOnEveryIsa) {
    for (dtype t : {dtype::q4_0, dtype::q8_0, dtype::f16, dtype::bf16, dtype::q4_k, dtype::q5_k, dtype::q6_k}) {
        const bool kq = t == dtype::q4_k || t == dtype::q5_k || t == dtype::q6_k;  // n_in a multiple of 256
        for (shape sh : kq ? std::vector<shape>{{256, 48}, {512, 32}, {1024, 16}}
                           : std::vector<shape>{{96, 32}, {544, 16}, {256, 160}}) {
            weights w = make_weights(t, sh.n_out, sh.n_in, 21 + uint64_t(sh.n_in));
            weights p = interleaved_copy(w);
            for (int64_t m : {1, 3, 7, 8, 9, 64, 130}) {
                std::vector<float> x = test::random_floats(m * sh.n_in, 9 + uint64_t(m), 2.0f);
                std::vector<float> want(size_t(m * sh.n_out)), row_major(size_t(m * sh.n_out));
                ref::matmul(w.view, x.data(), m, want.data());
                {
                    isa_scope scope(isa::scalar);
                    thread_pool pool(1);
                    matmul(w.view, x.data(), m, row_major.data(), pool);
                }
                for (isa i : supported_isas()) {
                    isa_scope scope(i);
                    for (int n_threads : {1, 2}) {
                        thread_pool pool(n_threads);
                        std::vector<float> y(size_t(m * sh.n_out), -12345.0f);
                        matmul(p.view, x.data(), m, y.data(), pool);
                        const std::string where = std::string(dtype_name(t)) + " isa " + isa_name(i) +
                                                  " m " + std::to_string(m) + " n_in " + std::to_string(sh.n_in) +
                                                  " n_out " + std::to_string(sh.n_out);
                        if (uses_bf16_dot(t, m)) {
                            std::vector<double> want_bf16 = ref_bf16_dot(w.view, x.data(), m);
                            EXPECT_LE(test::nmse_norm(y.data(), want_bf16.data(), m * sh.n_out), 1e-5) << where;
                            EXPECT_LE(test::nmse_norm(y.data(), want.data(), m * sh.n_out), 5e-3) << where;
                            continue;
                        }
                        EXPECT_LE(test::nmse_norm(y.data(), want.data(), m * sh.n_out), tolerance(t)) << where;
                        EXPECT_LE(test::nmse_norm(y.data(), row_major.data(), m * sh.n_out), 2e-6) << where;
                        if (i == isa::scalar) {
                            EXPECT_EQ(y, row_major) << where;
                        }
                    }
                }
            }
        }
    }
}

// Mixed layouts in one matmul_multi / matmul_swiglu call equal separate calls.
TEST(Interleave, MultiAndSwigluWithMixedLayouts) {
    weights a = interleaved_copy(make_weights(dtype::q4_0, 64, 128, 3));
    weights b = make_weights(dtype::f32, 64, 128, 4);
    weights c = interleaved_copy(make_weights(dtype::q8_0, 32, 128, 5));
    const int64_t m = 11;
    std::vector<float> x = test::random_floats(m * 128, 6);
    for (isa i : supported_isas()) {
        isa_scope scope(i);
        thread_pool pool(2);
        std::vector<float> ya(size_t(m * 64)), yb(size_t(m * 64)), yc(size_t(m * 32));
        matmul(a.view, x.data(), m, ya.data(), pool);
        matmul(b.view, x.data(), m, yb.data(), pool);
        matmul(c.view, x.data(), m, yc.data(), pool);
        std::vector<float> ma(ya.size()), mb(yb.size()), mc(yc.size());
        const weight_view views[3] = {a.view, b.view, c.view};
        float* const ys[3] = {ma.data(), mb.data(), mc.data()};
        matmul_multi(views, 3, x.data(), m, ys, pool);
        EXPECT_EQ(ma, ya) << isa_name(i);
        EXPECT_EQ(mb, yb) << isa_name(i);
        EXPECT_EQ(mc, yc) << isa_name(i);
        std::vector<float> g(ya.size()), u(ya.size()), out(ya.size()), want(ya.size());
        matmul_swiglu(a.view, b.view, x.data(), m, g.data(), u.data(), out.data(), pool);
        swiglu(ya.data(), yb.data(), want.data(), m * 64);
        EXPECT_EQ(out, want) << isa_name(i);
        std::fill(out.begin(), out.end(), 0.0f);
        matmul_swiglu(a.view, b.view, x.data(), m, g.data(), nullptr, out.data(), pool);
        EXPECT_EQ(out, want) << isa_name(i) << " (no y_up)";
    }
}

// K-quant kernels on blocks of random bytes (every scale, min and high bit pattern occurs, not
// only those the quantizer produces) against the dequantized weights, with x that the 8-bit
// activation quantization keeps exactly (integers, 127 in each super-block, so d_x = 1): every
// path must then equal the float64 dot up to float rounding of the per-super-block scaling.
TEST(KQuantMatmul, RandomBlocksMatchDequantizedDot) {
    const int64_t n_in = 512, n_out = 21;
    for (dtype t : {dtype::q4_k, dtype::q5_k, dtype::q6_k}) {
        const size_t row_bytes = dtype_row_bytes(t, n_in), bs = size_t(dtype_info(t).type_size);
        std::vector<uint8_t> w(size_t(n_out) * row_bytes);
        uint64_t r = 0x9e3779b97f4a7c15ull * (uint64_t(t) + 1);
        for (auto& b : w) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            b = uint8_t(r >> 56);
        }
        for (size_t blk = 0; blk < w.size() / bs; ++blk) {  // sane f16 super-block scales
            uint8_t* p = w.data() + blk * bs;
            const uint16_t d = f32_to_f16(0x1p-6f * float(1 + blk % 5)), dmin = f32_to_f16(0x1p-5f);
            if (t == dtype::q6_k) {
                std::memcpy(p + 208, &d, 2);
            } else {
                std::memcpy(p, &d, 2);
                std::memcpy(p + 2, &dmin, 2);
            }
        }
        weight_view wv{w.data(), t, n_out, n_in};
        for (int64_t m : {1, 2, 5, 9, 17, 40}) {  // from 16 rows AVX-512 puts x rows in lanes
            std::vector<float> x(size_t(m * n_in));
            for (int64_t i = 0; i < m * n_in; ++i) x[size_t(i)] = float(int((i * 7919 + 13) % 255) - 127);
            for (int64_t b = 0; b < m * n_in / 256; ++b) x[size_t(b * 256 + 17)] = 127.0f;
            std::vector<float> want(size_t(m * n_out));
            ref::matmul(wv, x.data(), m, want.data());
            for (isa i : supported_isas()) {
                isa_scope scope(i);
                thread_pool pool(2);
                std::vector<float> y(size_t(m * n_out));
                matmul(wv, x.data(), m, y.data(), pool);
                EXPECT_LE(test::nmse_norm(y.data(), want.data(), m * n_out), 1e-6)
                    << dtype_name(t) << " isa " << isa_name(i) << " m " << m;
            }
        }
    }
}

// One pass over x for weights that need both activation formats (per-32 q8 and per-256 q8_K),
// as a q4_k_m model's fused QKV does (q4_k beside q6_k, q8_0 fallbacks): values identical to
// separate calls on every ISA.
TEST(KQuantMatmul, MixedFormatsInOnePass) {
    const int64_t n_in = 512;
    weights wa = make_weights(dtype::q4_k, 40, n_in, 41), wb = make_weights(dtype::q6_k, 24, n_in, 42),
            wc = make_weights(dtype::q8_0, 33, n_in, 43), wd = make_weights(dtype::q5_k, 9, n_in, 44);
    const weight_view views[4] = {wa.view, wb.view, wc.view, wd.view};
    for (int64_t m : {1, 6, 20}) {
        std::vector<float> x = test::random_floats(m * n_in, 51 + uint64_t(m), 2.0f);
        for (isa i : supported_isas()) {
            isa_scope scope(i);
            thread_pool pool(2);
            std::vector<std::vector<float>> ys(4);
            float* yp[4];
            for (int j = 0; j < 4; ++j) {
                ys[size_t(j)].resize(size_t(m * views[j].n_out));
                yp[j] = ys[size_t(j)].data();
            }
            matmul_multi(views, 4, x.data(), m, yp, pool);
            for (int j = 0; j < 4; ++j) {
                std::vector<float> want(size_t(m * views[j].n_out));
                matmul(views[j], x.data(), m, want.data(), pool);
                for (size_t e = 0; e < want.size(); ++e) ASSERT_EQ(ys[size_t(j)][e], want[e]) << isa_name(i) << " weight " << j;
            }
        }
    }
}

TEST(Matmul, UnsupportedDtypeWritesNaN) {
    EXPECT_FALSE(matmul_supported(dtype::q3_k));
    EXPECT_FALSE(matmul_supported(dtype::i32));
    std::vector<uint8_t> w(2 * 110);
    weight_view wv{w.data(), dtype::q3_k, 2, 256};
    std::vector<float> x(256, 1.0f), y(2, 0.0f);
    thread_pool pool(1);
    matmul(wv, x.data(), 1, y.data(), pool);
    EXPECT_TRUE(std::isnan(y[0]) && std::isnan(y[1]));
}

// ---- elementwise kernels -------------------------------------------------------------------------

TEST(Rmsnorm, MatchesReferenceAndFormula) {
    for (int64_t n : {1, 7, 64, 2048, 2049}) {
        std::vector<float> x = test::random_floats(n, 1 + uint64_t(n), 3.0f);
        std::vector<float> w = test::random_floats(n, 2 + uint64_t(n), 1.5f);
        std::vector<float> y(static_cast<size_t>(n)), r(static_cast<size_t>(n));
        rmsnorm(x.data(), w.data(), y.data(), n, 1e-5f);
        ref::rmsnorm(x.data(), w.data(), r.data(), n, 1e-5f);
        double ss = 0;
        for (float v : x) ss += double(v) * v;
        std::vector<double> want(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) want[size_t(i)] = x[size_t(i)] / std::sqrt(ss / double(n) + 1e-5) * w[size_t(i)];
        EXPECT_LE(test::nmse_norm(y.data(), want.data(), n), 1e-6) << n;
        EXPECT_LE(test::nmse_norm(r.data(), want.data(), n), 1e-7) << n;
    }
}

// Direct formula: theta_i = pos · scale · base^(-2i/n_rot), pairs per layout.
std::vector<double> rope_formula(const std::vector<float>& x, int64_t n_head, int64_t head_dim, int64_t n_rot,
                                 int64_t pos, double base, double scale, rope_layout layout) {
    std::vector<double> out(x.begin(), x.end());
    for (int64_t h = 0; h < n_head; ++h) {
        for (int64_t i = 0; i < n_rot / 2; ++i) {
            double th = double(pos) * scale * std::pow(base, -2.0 * double(i) / double(n_rot));
            int64_t a = h * head_dim + (layout == rope_layout::normal ? 2 * i : i);
            int64_t b = h * head_dim + (layout == rope_layout::normal ? 2 * i + 1 : i + n_rot / 2);
            out[size_t(a)] = x[size_t(a)] * std::cos(th) - x[size_t(b)] * std::sin(th);
            out[size_t(b)] = x[size_t(a)] * std::sin(th) + x[size_t(b)] * std::cos(th);
        }
    }
    return out;
}

// The fused residual add + norm equals the two steps bit for bit.
TEST(Rmsnorm, AddRmsnormEqualsAddThenNorm) {
    for (int64_t n : {1, 7, 64, 2048}) {
        std::vector<float> x = test::random_floats(n, 3 + uint64_t(n), 2.0f), delta = test::random_floats(n, 4, 1.0f);
        std::vector<float> w = test::random_floats(n, 5, 1.0f);
        std::vector<float> x2 = x, y(static_cast<size_t>(n)), y2(static_cast<size_t>(n));
        add_rmsnorm(x.data(), delta.data(), w.data(), y.data(), n, 1e-5f);
        for (int64_t k = 0; k < n; ++k) x2[size_t(k)] += delta[size_t(k)];
        rmsnorm(x2.data(), w.data(), y2.data(), n, 1e-5f);
        EXPECT_EQ(x, x2) << n;
        EXPECT_EQ(y, y2) << n;
    }
}

TEST(Rope, BothLayoutsMatchFormula) {
    const int64_t n_head = 3, head_dim = 64;
    for (rope_layout layout : {rope_layout::normal, rope_layout::neox}) {
        for (int64_t n_rot : {64, 32}) {
            // Positions in the millions (a StreamingLLM stream's sinks, a window past 1M tokens) are as
            // exact as short ones: angles in float32 would be off by ~0.06 rad at 10^6.
            for (int64_t pos : {int64_t(0), int64_t(1), int64_t(17), int64_t(4095), int64_t(100000), int64_t(1000003),
                                int64_t(123456789)}) {
                std::vector<float> x = test::random_floats(n_head * head_dim, uint64_t(pos) + 3);
                std::vector<double> want = rope_formula(x, n_head, head_dim, n_rot, pos, 10000.0, 0.5, layout);
                std::vector<float> y = x, r = x;
                rope(y.data(), n_head, head_dim, n_rot, pos, 10000.0f, 0.5f, layout);
                ref::rope(r.data(), n_head, head_dim, n_rot, pos, 10000.0f, 0.5f, layout);
                EXPECT_LE(test::nmse_norm(y.data(), want.data(), n_head * head_dim), 1e-6)
                    << int(layout) << " n_rot " << n_rot << " pos " << pos;
                EXPECT_LE(test::nmse_norm(r.data(), want.data(), n_head * head_dim), 1e-7);
                // Dims past n_rot are untouched.
                for (int64_t h = 0; h < n_head; ++h)
                    for (int64_t d = n_rot; d < head_dim; ++d)
                        EXPECT_EQ(y[size_t(h * head_dim + d)], x[size_t(h * head_dim + d)]);
            }
        }
    }
}

TEST(Rope, LayoutsDiffer) {
    std::vector<float> a = test::random_floats(64, 9), b = a;
    rope(a.data(), 1, 64, 64, 5, 10000.0f, 1.0f, rope_layout::normal);
    rope(b.data(), 1, 64, 64, 5, 10000.0f, 1.0f, rope_layout::neox);
    EXPECT_GT(test::nmse_norm(a.data(), b.data(), 64), 1e-2);
}

TEST(Swiglu, MatchesReferenceAndKnownValues) {
    const int64_t n = 1000;
    std::vector<float> g = test::random_floats(n, 1, 8.0f), u = test::random_floats(n, 2, 2.0f);
    g[0] = 0.0f;
    g[1] = -100.0f;
    g[2] = 100.0f;
    u[2] = 1.0f;
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) want[size_t(i)] = double(g[size_t(i)]) / (1.0 + std::exp(-double(g[size_t(i)]))) * u[size_t(i)];
    std::vector<float> r(n);
    ref::swiglu(g.data(), u.data(), r.data(), n);
    EXPECT_LE(test::nmse_norm(r.data(), want.data(), n), 1e-7);
    for (isa i : supported_isas()) {
        isa_scope scope(i);
        for (int64_t len : {n, int64_t(1), int64_t(17), int64_t(31)}) {  // vector tails
            std::vector<float> y(n, 5.0f);
            swiglu(g.data(), u.data(), y.data(), len);
            EXPECT_LE(test::nmse_norm(y.data(), want.data(), len), 1e-6) << isa_name(i) << " n " << len;
            if (len < n) {
                EXPECT_EQ(y[size_t(len)], 5.0f) << isa_name(i);  // nothing past n written
            }
            for (int64_t k = 0; k < len; ++k) EXPECT_TRUE(std::isfinite(y[size_t(k)]));
        }
        std::vector<float> y(n);
        swiglu(g.data(), u.data(), y.data(), n);
        EXPECT_EQ(y[0], 0.0f) << isa_name(i);
        EXPECT_NEAR(y[1], 0.0f, 1e-30) << isa_name(i);
        EXPECT_FLOAT_EQ(y[2], 100.0f) << isa_name(i);
    }
}

TEST(Softmax, MatchesReferenceAndReturnsLse) {
    for (int64_t n : {1, 5, 100, 4096}) {
        std::vector<float> x = test::random_floats(n, uint64_t(n), 20.0f);
        x[0] = 1000.0f;  // large values must not overflow
        double mx = -1e300;
        for (float v : x) mx = std::max(mx, double(v));
        double sum = 0;
        for (float v : x) sum += std::exp(double(v) - mx);
        std::vector<double> want(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) want[size_t(i)] = std::exp(double(x[size_t(i)]) - mx) / sum;
        const double lse = std::log(sum) + mx;
        std::vector<float> y = x, r = x;
        float got_lse = softmax(y.data(), n);
        float ref_lse = ref::softmax(r.data(), n);
        EXPECT_LE(test::nmse_norm(y.data(), want.data(), n), 1e-6) << n;
        EXPECT_LE(test::nmse_norm(r.data(), want.data(), n), 1e-7) << n;
        EXPECT_NEAR(got_lse, lse, 1e-6 * std::fabs(lse)) << n;
        EXPECT_NEAR(ref_lse, lse, 1e-6 * std::fabs(lse)) << n;
        double total = 0;
        for (float v : y) total += v;
        EXPECT_NEAR(total, 1.0, 1e-5);
    }
}

TEST(Softmax, SmallKnownCaseAndMaskedRows) {
    float x[3] = {0.0f, std::log(3.0f), -std::numeric_limits<float>::infinity()};
    float lse = softmax(x, 3);
    EXPECT_NEAR(x[0], 0.25f, 1e-7);
    EXPECT_NEAR(x[1], 0.75f, 1e-7);
    EXPECT_EQ(x[2], 0.0f);
    EXPECT_NEAR(lse, std::log(4.0f), 1e-6);
    float masked[4];
    for (float& v : masked) v = -std::numeric_limits<float>::infinity();
    EXPECT_EQ(softmax(masked, 4), -std::numeric_limits<float>::infinity());
    for (float v : masked) EXPECT_EQ(v, 0.0f);
}

TEST(DotF32, EveryIsaMatchesDouble) {
    for (isa i : supported_isas()) {
        isa_scope scope(i);
        for (int64_t n : {0, 1, 7, 16, 17, 63, 100, 1000, 4099}) {
            std::vector<float> a = test::random_floats(n, 1 + uint64_t(n)), b = test::random_floats(n, 2 + uint64_t(n));
            double want = 0, mag = 0;
            for (int64_t k = 0; k < n; ++k) {
                want += double(a[size_t(k)]) * b[size_t(k)];
                mag += std::fabs(double(a[size_t(k)]) * b[size_t(k)]);
            }
            float got = dot_f32(a.data(), b.data(), n);
            EXPECT_NEAR(got, want, 1e-6 * mag + 1e-30) << isa_name(i) << " n " << n;
        }
    }
}

// ---- thread pool ----------------------------------------------------------------------------------

TEST(ThreadPool, EveryTaskRunsExactlyOnce) {
    for (int n_threads : {1, 2, 3, 5}) {
        thread_pool pool(n_threads);
        EXPECT_EQ(pool.n_threads(), n_threads);
        for (int64_t n_tasks : {0, 1, 2, 3, 17, 1000}) {
            std::vector<std::atomic<int>> hits(static_cast<size_t>(n_tasks));
            std::atomic<bool> bad_thread{false};
            pool.run(n_tasks, [&](int64_t t, int th) {
                hits[size_t(t)].fetch_add(1);
                if (th < 0 || th >= n_threads) bad_thread = true;
            });
            for (int64_t t = 0; t < n_tasks; ++t) EXPECT_EQ(hits[size_t(t)].load(), 1) << n_threads << " " << t;
            EXPECT_FALSE(bad_thread);
        }
    }
}

// Many back-to-back jobs (workers spinning) and jobs separated by pauses long enough for the
// workers to fall asleep: a lost wake-up would hang, a late worker would corrupt the count.
TEST(ThreadPool, RepeatedRunsSpinningAndSleeping) {
    thread_pool pool(3);
    int64_t total = 0;
    std::vector<int64_t> per_task(64, 0);
    for (int iter = 0; iter < 20000; ++iter) {
        int64_t n = 1 + iter % 64;
        pool.run(n, [&](int64_t t, int) { per_task[size_t(t)] += 1; });  // distinct tasks: no race
        total += n;
        if (iter % 4000 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    int64_t sum = 0;
    for (int64_t v : per_task) sum += v;
    EXPECT_EQ(sum, total);
}

TEST(ThreadPool, WorkIsSharedAndPoolsComeAndGo) {
    for (int rep = 0; rep < 10; ++rep) {
        thread_pool pool(2);
        std::atomic<int> seen_mask{0};
        pool.run(64, [&](int64_t, int th) {
            seen_mask.fetch_or(1 << th);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        });
        // With 64 tasks of 1 ms each (sleeping, so even a busy machine runs both), both
        // threads take some.
        EXPECT_EQ(seen_mask.load(), 3) << rep;
    }
}

}  // namespace
}  // namespace kvs::cpu
