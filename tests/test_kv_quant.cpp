// Per-group quantized KV formats (q8_0, q4_0, q4_1): the quantizer against its float64
// reference (tests/reference_kv_quant.h), the round-trip distortion per format, row copies,
// and what attention over quantized pages costs against f32.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_quant.h"
#include "kernels/cpu/ops.h"
#include "reference_kv_quant.h"
#include "test_util.h"

using namespace kvs;

namespace {

constexpr dtype quant_types[] = {dtype::q8_0, dtype::q4_0, dtype::q4_1};

// Rows of Gaussian values whose scale varies by row, with two outlier channels (20x the others)
// and an occasional constant row (zero range: the scale is 0).
std::vector<float> test_rows(int64_t n_rows, int64_t hd, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    std::vector<float> x(size_t(n_rows * hd));
    for (int64_t r = 0; r < n_rows; ++r) {
        const float scale = std::exp2(float(int(r % 7) - 3));
        for (int64_t d = 0; d < hd; ++d) {
            float v = n01(rng) * scale;
            if (d == 1 || d == hd - 2) v *= 20.0f;
            if (r % 11 == 5) v = 0.25f;  // constant row
            x[size_t(r * hd + d)] = v;
        }
    }
    return x;
}

// Normalized round-trip error bound per format on test_rows (measured, head_dim 64: 1.23%
// q8_0, 15.7% q4_0, less for q4_1). A uniform quantizer's error is step / sqrt(12); the outlier
// channels set the step of their group, which is what per-token groups along head_dim pay for
// outlier channels (KIVI quantizes keys per channel for this reason).
double distortion_bound(dtype t) { return t == dtype::q8_0 ? 0.015 : 0.2; }

}  // namespace

class KvQuant : public ::testing::TestWithParam<dtype> {};

// The engine's codes decode to the float64 reference's values; every element is within half a
// step of its input except the values q4_0's asymmetric range clamps (the +8 side), and the
// normalized distortion of the row stays within the format's bound.
TEST_P(KvQuant, QuantizerMatchesFloat64Reference) {
    const dtype t = GetParam();
    for (int64_t hd : {5, 8, 32, 64, 128}) {
        const int64_t ps = 16, n_rows = 64;
        const cpu::kv_page_layout lay{t, 1, ps, hd, std::nullopt};
        ASSERT_STREQ(lay.head_dim_problem(), "");
        const std::vector<float> x = test_rows(n_rows, hd, uint64_t(hd) * 7 + uint64_t(t));
        std::vector<uint8_t> block(lay.k_head_bytes(), 0xAB);
        int64_t mismatches = 0, n = 0;
        double err2 = 0, ref2 = 0, sig2 = 0;
        for (int64_t r = 0; r < n_rows; ++r) {
            const int64_t row = r % ps;
            cpu::kv_quantize_row(lay, x.data() + r * hd, block.data(), row);
            const std::vector<double> ref = test::reference_quantize_row(t, x.data() + r * hd, hd);
            std::vector<float> dec(static_cast<size_t>(hd));
            cpu::kv_dequantize_row(lay, block.data(), row, dec.data());
            const int64_t gs = lay.q_group();
            for (int64_t g0 = 0; g0 < hd; g0 += gs) {
                const test::quant_group q = test::reference_quantize_group(t, x.data() + r * hd + g0, gs);
                for (int64_t i = 0; i < gs; ++i) {
                    const int64_t d = g0 + i;
                    const double xi = x[size_t(r * hd + d)];
                    ++n;
                    EXPECT_EQ(dec[size_t(d)], cpu::kv_dequantize(lay, block.data(), row, d));
                    if (std::fabs(dec[size_t(d)] - ref[size_t(d)]) > 1e-6 * std::max(std::fabs(q.d), 1e-30)) ++mismatches;
                    const bool clamped = t == dtype::q4_0 && q.codes[size_t(i)] == 7 && xi / q.d > 7.5;
                    if (!clamped) {
                        EXPECT_LE(std::fabs(dec[size_t(d)] - xi), 0.5 * std::fabs(q.d) * (1 + 1e-3) + 1e-6 * std::fabs(xi))
                            << dtype_name(t) << " hd " << hd << " row " << r << " dim " << d;
                    }
                    err2 += (dec[size_t(d)] - xi) * (dec[size_t(d)] - xi);
                    ref2 += (ref[size_t(d)] - xi) * (ref[size_t(d)] - xi);
                    sig2 += xi * xi;
                }
            }
        }
        // A tie rounded differently in float and double flips one code now and then.
        EXPECT_LE(mismatches, n / 500) << dtype_name(t) << " hd " << hd;
        EXPECT_LT(std::sqrt(err2 / sig2), distortion_bound(t)) << dtype_name(t) << " hd " << hd;
        EXPECT_NEAR(std::sqrt(err2 / sig2), std::sqrt(ref2 / sig2), 1e-3) << dtype_name(t) << " hd " << hd;
    }
}

// Rows copy bit for bit (codes and scales): H2O moves kept tokens between slots this way.
TEST_P(KvQuant, RowCopyIsExact) {
    const dtype t = GetParam();
    const int64_t hd = 64, ps = 8;
    const cpu::kv_page_layout lay{t, 1, ps, hd, std::nullopt};
    const std::vector<float> x = test_rows(ps, hd, 3);
    std::vector<uint8_t> a(lay.k_head_bytes(), 0), b(lay.k_head_bytes(), 0), va(lay.v_head_bytes(), 0), vb(lay.v_head_bytes(), 0);
    for (int64_t r = 0; r < ps; ++r) cpu::kv_store_row(lay, a.data(), va.data(), 0, 0, r, x.data() + r * hd, x.data() + r * hd);
    for (int64_t r = 0; r < ps; ++r) cpu::kv_copy_row(lay, b.data(), vb.data(), ps - 1 - r, a.data(), va.data(), r);
    for (int64_t r = 0; r < ps; ++r)
        for (int64_t d = 0; d < hd; ++d) {
            EXPECT_EQ(cpu::kv_load_k(lay, b.data(), ps - 1 - r, d), cpu::kv_load_k(lay, a.data(), r, d));
            EXPECT_EQ(cpu::kv_load_v(lay, vb.data(), ps - 1 - r, d), cpu::kv_load_v(lay, va.data(), r, d));
        }
}

// Bytes per stored value: llama.cpp's 8.5 (q8_0), 4.5 (q4_0) and 5 (q4_1) bits for groups of 32.
TEST_P(KvQuant, BitsPerValue) {
    const dtype t = GetParam();
    const cpu::kv_page_layout lay{t, 4, 16, 128, std::nullopt};
    const double bits = double(lay.k_page_bytes()) * 8 / double(4 * 16 * 128);
    EXPECT_DOUBLE_EQ(bits, t == dtype::q8_0 ? 8.5 : t == dtype::q4_0 ? 4.5 : 5.0);
    EXPECT_EQ(lay.k_page_bytes(), lay.v_page_bytes());
    // head_dim 40 does not split into groups of 32.
    EXPECT_STRNE((cpu::kv_page_layout{t, 1, 16, 40, std::nullopt}.head_dim_problem()), "");
}

INSTANTIATE_TEST_SUITE_P(Formats, KvQuant, ::testing::ValuesIn(quant_types),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// What quantized K and V cost in the attention output, against the float64 reference over the
// unquantized values (GQA, head_dim 64, 341 keys over pages of 16), on every ISA path.
TEST(KvQuantAttention, StaysCloseToF32) {
    const int64_t n_head = 8, n_kv_head = 2, hd = 64, ps = 16;
    const std::vector<int32_t> lens = {300, 41};
    int64_t n_pages = 0;
    std::vector<int32_t> indptr{0}, ids;
    for (int32_t len : lens) {
        for (int32_t p = 0; p < (len + ps - 1) / ps; ++p) ids.push_back(int32_t(n_pages++));
        indptr.push_back(int32_t(ids.size()));
    }
    const std::vector<float> k = test::random_floats(n_pages * n_kv_head * ps * hd, 5, 1.0f);
    const std::vector<float> v = test::random_floats(n_pages * n_kv_head * ps * hd, 6, 1.0f);
    const int64_t n_q = 4 * int64_t(lens.size());
    std::vector<float> q = test::random_floats(n_q * n_head * hd, 7, 1.0f);
    std::vector<int32_t> q_seq, q_len;
    for (size_t i = 0; i < lens.size(); ++i)
        for (int j = 0; j < 4; ++j) q_seq.push_back(int32_t(i)), q_len.push_back(lens[i] - 3 + j);
    cpu::attention_batch b;
    b.n_q = n_q;
    b.n_head = n_head;
    b.q = q.data();
    b.q_seq = q_seq.data();
    b.q_kv_len = q_len.data();
    b.page_indptr = indptr.data();
    b.page_ids = ids.data();
    b.scale = 1.0f / std::sqrt(float(hd));
    const size_t n_out = size_t(n_q * n_head * hd);
    test::packed_kv f32 = test::pack_kv(k, v, n_pages, n_kv_head, ps, hd, dtype::f32);
    std::vector<float> o_ref(n_out), lse_ref(size_t(n_q * n_head));
    cpu::ref::attention_paged(b, f32.view, o_ref.data(), lse_ref.data());
    thread_pool pool(2);
    for (dtype t : quant_types) {
        test::packed_kv p = test::pack_kv(k, v, n_pages, n_kv_head, ps, hd, t);
        for (cpu::isa i : {cpu::isa::scalar, cpu::isa::avx2, cpu::isa::avx512}) {
            if (!cpu::isa_supported(i)) continue;
            cpu::isa_override(i);
            std::vector<float> o(n_out), lse(lse_ref.size());
            cpu::attention_paged(b, p.view, o.data(), lse.data(), pool);
            cpu::isa_reset();
            const double err = test::nmse_norm(o.data(), o_ref.data(), int64_t(n_out));
            // V's rounding passes into the output almost as is; K's is damped by the softmax.
            EXPECT_LT(err, t == dtype::q8_0 ? 1e-2 : 0.12) << dtype_name(t) << " " << cpu::isa_name(i);
            EXPECT_GT(err, 1e-4) << dtype_name(t) << ": quantization should change something";
        }
    }
}
