// The DeepSeek-V2 mixture-of-experts FFN (model/moe.h) against a float64 reference written
// from its definition: routing (softmax, top-k with ties to the lower index, norm and scale),
// the layer's output for every weight dtype with and without shared experts, grouped against
// per-token evaluation, thread-count independence, and experts no token chose left unread.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/cpu/interleave.h"
#include "kernels/cpu/ops.h"
#include "model/moe.h"
#include "test_util.h"

namespace kvs {
namespace {

// ---- float64 reference ------------------------------------------------------------------------

// Routing of one token from its logits (n_expert): softmax, experts sorted by probability
// descending with ties to the lower index, the first k; weights as moe.h defines them.
void ref_route(const double* logits, int64_t n_expert, int64_t k, bool norm_topk, double scale, int32_t* ids,
               double* weights) {
    double mx = -INFINITY;
    for (int64_t e = 0; e < n_expert; ++e) mx = std::max(mx, logits[e]);
    std::vector<double> p(static_cast<size_t>(n_expert));
    double sum = 0;
    for (int64_t e = 0; e < n_expert; ++e) sum += p[size_t(e)] = std::exp(logits[e] - mx);
    for (double& v : p) v /= sum;
    std::vector<int32_t> order(static_cast<size_t>(n_expert));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)]; });
    double chosen = 0;
    for (int64_t j = 0; j < k; ++j) chosen += p[size_t(order[size_t(j)])];
    for (int64_t j = 0; j < k; ++j) {
        ids[j] = order[size_t(j)];
        weights[j] = p[size_t(ids[j])] / (norm_topk ? chosen : 1.0) * scale;
    }
}

// A matrix stack as the reference sees it: dequantized floats (n_mat, n_out, n_in).
struct ref_stack {
    std::vector<float> f;
    int64_t n_out = 0, n_in = 0;
    const float* row(int64_t mat, int64_t o) const { return f.data() + (mat * n_out + o) * n_in; }
};

double dot(const float* w, const double* x, int64_t n) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += double(w[i]) * x[i];
    return acc;
}

// y (n_embd) += wt · down(silu(gate · x) ⊙ up · x) with matrix `mat` of each stack.
void ref_swiglu_ffn(const ref_stack& gate, const ref_stack& up, const ref_stack& down, int64_t mat, const double* x,
                    double wt, double* y) {
    std::vector<double> a(size_t(gate.n_out));
    for (int64_t o = 0; o < gate.n_out; ++o) {
        const double g = dot(gate.row(mat, o), x, gate.n_in), u = dot(up.row(mat, o), x, up.n_in);
        a[size_t(o)] = g / (1.0 + std::exp(-g)) * u;
    }
    for (int64_t o = 0; o < down.n_out; ++o) y[o] += wt * dot(down.row(mat, o), a.data(), down.n_in);
}

struct ref_layer {
    ref_stack router, gate, up, down, gate_sh, up_sh, down_sh;
    int64_t n_expert = 0, k = 0;
    bool shared = false, norm_topk = false;
    double scale = 1;
};

struct ref_result {
    std::vector<double> out;      // (n, n_embd)
    std::vector<int32_t> ids;     // (n, k)
    std::vector<double> weights;  // (n, k)
};

ref_result ref_moe(const ref_layer& L, const float* h, int64_t n) {
    const int64_t n_embd = L.gate.n_in, k = L.k;
    ref_result r;
    r.out.assign(size_t(n * n_embd), 0.0);
    r.ids.resize(size_t(n * k));
    r.weights.resize(size_t(n * k));
    std::vector<double> x(static_cast<size_t>(n_embd)), logits(static_cast<size_t>(L.n_expert));
    for (int64_t t = 0; t < n; ++t) {
        for (int64_t i = 0; i < n_embd; ++i) x[size_t(i)] = h[t * n_embd + i];
        for (int64_t e = 0; e < L.n_expert; ++e) logits[size_t(e)] = dot(L.router.row(0, e), x.data(), n_embd);
        ref_route(logits.data(), L.n_expert, k, L.norm_topk, L.scale, r.ids.data() + t * k, r.weights.data() + t * k);
        double* y = r.out.data() + t * n_embd;
        if (L.shared) ref_swiglu_ffn(L.gate_sh, L.up_sh, L.down_sh, 0, x.data(), 1.0, y);
        for (int64_t j = 0; j < k; ++j) {
            ref_swiglu_ffn(L.gate, L.up, L.down, r.ids[size_t(t * k + j)], x.data(), r.weights[size_t(t * k + j)], y);
        }
    }
    return r;
}

// ---- test layers ------------------------------------------------------------------------------

// A stack of n_mat matrices (n_out, n_in) of dtype t quantized from random floats, as GGUF's
// 3-D expert tensors store them; view = matrix 0 with one matrix's shape.
struct stack {
    std::vector<uint8_t> bytes;
    cpu::weight_view view;
    ref_stack ref;
};

stack make_stack(dtype t, int64_t n_mat, int64_t n_out, int64_t n_in, uint64_t seed, float scale) {
    stack s;
    std::vector<float> f = test::random_floats(n_mat * n_out * n_in, seed, scale);
    const size_t row_bytes = dtype_row_bytes(t, n_in);
    s.bytes.resize(size_t(n_mat * n_out) * row_bytes);
    s.ref.f.resize(f.size());
    s.ref.n_out = n_out;
    s.ref.n_in = n_in;
    for (int64_t r = 0; r < n_mat * n_out; ++r) {
        EXPECT_TRUE(quantize_row(t, f.data() + r * n_in, s.bytes.data() + size_t(r) * row_bytes, n_in));
        EXPECT_TRUE(dequantize_row(t, s.bytes.data() + size_t(r) * row_bytes, s.ref.f.data() + r * n_in, n_in));
    }
    s.view = {s.bytes.data(), t, n_out, n_in};
    return s;
}

constexpr int64_t n_embd = 256, n_ff_exp = 256;  // multiples of every block size (q4_K: 256)

struct layer {
    stack router, gate, up, down, gate_sh, up_sh, down_sh;
    moe_weights w;
    ref_layer ref;

    // Points w and ref at the stacks (after any edit of the stacks' bytes or floats).
    void bind(int64_t n_expert, int64_t k, int64_t n_shared, bool norm_topk, float scale) {
        w = {};
        w.router = router.view;
        w.gate_exps = gate.view;
        w.up_exps = up.view;
        w.down_exps = down.view;
        w.n_expert = n_expert;
        w.n_used = k;
        w.scale = scale;
        w.norm_topk = norm_topk;
        if (n_shared > 0) {
            w.gate_sh = gate_sh.view;
            w.up_sh = up_sh.view;
            w.down_sh = down_sh.view;
        }
        ref = {router.ref, gate.ref, up.ref, down.ref, gate_sh.ref, up_sh.ref, down_sh.ref,
               n_expert, k, n_shared > 0, norm_topk, scale};
    }
};

layer make_layer(dtype t, int64_t n_expert, int64_t k, int64_t n_shared, uint64_t seed, bool norm_topk = false,
                 float scale = 1.0f) {
    layer L;
    L.router = make_stack(dtype::f32, 1, n_expert, n_embd, seed, 0.5f);
    L.gate = make_stack(t, n_expert, n_ff_exp, n_embd, seed + 1, 0.5f);
    L.up = make_stack(t, n_expert, n_ff_exp, n_embd, seed + 2, 0.5f);
    L.down = make_stack(t, n_expert, n_embd, n_ff_exp, seed + 3, 0.5f);
    if (n_shared > 0) {
        const int64_t n_ff_sh = n_ff_exp * n_shared;
        L.gate_sh = make_stack(t, 1, n_ff_sh, n_embd, seed + 4, 0.5f);
        L.up_sh = make_stack(t, 1, n_ff_sh, n_embd, seed + 5, 0.5f);
        L.down_sh = make_stack(t, 1, n_embd, n_ff_sh, seed + 6, 0.5f);
    }
    L.bind(n_expert, k, n_shared, norm_topk, scale);
    return L;
}

std::vector<cpu::isa> supported_isas() {
    std::vector<cpu::isa> out;
    for (cpu::isa i : {cpu::isa::scalar, cpu::isa::avx2, cpu::isa::avx512}) {
        if (cpu::isa_supported(i)) out.push_back(i);
    }
    return out;
}

struct isa_scope {
    explicit isa_scope(cpu::isa i) { cpu::isa_override(i); }
    ~isa_scope() { cpu::isa_reset(); }
};

// f16/bf16 matmuls of m >= 2 rows take the bf16 dot-product path where the CPU has it
// (ops.h), whose rounding differs from the m = 1 path; this turns it off while in scope, so
// that a batch and its rows alone run the same arithmetic.
struct no_bf16_dot_scope {
    no_bf16_dot_scope() {
        cpu::matmul_tuning_table tbl = cpu::matmul_tuning_active();
        for (dtype t : {dtype::f16, dtype::bf16}) {
            for (int c = 0; c < cpu::matmul_n_m_classes; ++c) tbl.at(t, cpu::matmul_m_class(c)).bf16_dot = false;
        }
        cpu::matmul_tuning_set(tbl);
    }
    ~no_bf16_dot_scope() { cpu::matmul_tuning_reset(); }
};

// Tolerance of the layer against the float64 reference (normalized error over the output),
// two matmuls in sequence. Float weights: float accumulation (f16 weights of m >= 2 rows may
// take the bf16 dot-product path, within 5e-3 per matmul, test_kernels.cpp). Quantized
// weights: the kernels quantize the activations to 8 bits per block with an absmax scale
// (32 elements; 256 for k-quants), and the down matmul's input, silu(gate) ⊙ up, is
// heavy-tailed, so its blocks quantize more coarsely than uniform data: measured 1.1-1.2%
// for q8_0 / q4_0 and 1.8% for q4_K here, about half these bounds.
double tolerance(dtype t, int64_t n) {
    switch (t) {
        case dtype::f32: return 1e-5;
        case dtype::f16: return n >= 2 && cpu::isa_active() == cpu::isa::avx512 ? 1e-2 : 1e-5;
        case dtype::q4_k: return 4e-2;
        default: return 3e-2;
    }
}

// ---- routing ----------------------------------------------------------------------------------

void expect_route_matches(const std::vector<float>& logits, int64_t n, int64_t n_expert, int64_t k, bool norm,
                          float scale) {
    std::vector<int32_t> ids(size_t(n * k), -1);
    std::vector<float> wts(size_t(n * k));
    moe_route(logits.data(), n, n_expert, k, norm, scale, ids.data(), wts.data());
    std::vector<double> lg(static_cast<size_t>(n_expert));
    std::vector<int32_t> want_ids(static_cast<size_t>(k));
    std::vector<double> want_w(static_cast<size_t>(k));
    for (int64_t t = 0; t < n; ++t) {
        for (int64_t e = 0; e < n_expert; ++e) lg[size_t(e)] = logits[size_t(t * n_expert + e)];
        ref_route(lg.data(), n_expert, k, norm, scale, want_ids.data(), want_w.data());
        for (int64_t j = 0; j < k; ++j) {
            EXPECT_EQ(ids[size_t(t * k + j)], want_ids[size_t(j)])
                << "token " << t << " rank " << j << " k " << k << " n_expert " << n_expert;
            EXPECT_NEAR(wts[size_t(t * k + j)], want_w[size_t(j)], 1e-6 * std::abs(want_w[size_t(j)]) + 1e-30)
                << "token " << t << " rank " << j << " k " << k << " norm " << norm << " scale " << scale;
        }
    }
}

TEST(MoeRoute, MatchesReference) {
    for (int64_t n_expert : {1, 6, 10, 64}) {
        for (int64_t k : {int64_t(1), int64_t(2), std::min<int64_t>(6, n_expert), n_expert}) {
            if (k > n_expert) continue;
            for (bool norm : {false, true}) {
                for (float scale : {1.0f, 2.5f, 16.0f}) {
                    const int64_t n = 37;
                    std::vector<float> logits = test::random_floats(n * n_expert, 7 + uint64_t(n_expert * 13 + k), 4.0f);
                    expect_route_matches(logits, n, n_expert, k, norm, scale);
                }
            }
        }
    }
}

TEST(MoeRoute, EqualProbabilitiesRankTheLowerExpertFirst) {
    // Ties among the best, across the cut, and everywhere.
    const std::vector<float> logits = {1, 3, 3, 0, 3, 2, 2, -1,   // one token
                                       5, 5, 5, 5, 5, 5, 5, 5,    // all equal
                                       0, 0, 1, 0, 1, 0, 0, 1};   // three tie at the top
    for (int64_t k = 1; k <= 8; ++k) {
        for (bool norm : {false, true}) expect_route_matches(logits, 3, 8, k, norm, 1.5f);
    }
    std::vector<int32_t> ids(12);
    std::vector<float> w(12);
    moe_route(logits.data(), 3, 8, 4, false, 1.0f, ids.data(), w.data());
    EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + 4), (std::vector<int32_t>{1, 2, 4, 5}));
    EXPECT_EQ(std::vector<int32_t>(ids.begin() + 4, ids.begin() + 8), (std::vector<int32_t>{0, 1, 2, 3}));
    EXPECT_EQ(std::vector<int32_t>(ids.begin() + 8, ids.end()), (std::vector<int32_t>{2, 4, 7, 0}));
    for (int j = 4; j < 8; ++j) EXPECT_FLOAT_EQ(w[size_t(j)], 1.0f / 8);  // all equal: 1 / n_expert each
    EXPECT_EQ(w[1], w[2]);
    // A NaN logit ranks last.
    const std::vector<float> with_nan = {std::numeric_limits<float>::quiet_NaN(), 1, 2};
    moe_route(with_nan.data(), 1, 3, 3, false, 1.0f, ids.data(), w.data());
    EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + 3), (std::vector<int32_t>{2, 1, 0}));
}

TEST(MoeRoute, NormTopkAndScale) {
    const int64_t n = 20, ne = 16, k = 4;
    std::vector<float> logits = test::random_floats(n * ne, 99, 3.0f);
    std::vector<int32_t> ids(size_t(n * k)), ids_norm(size_t(n * k));
    std::vector<float> w(size_t(n * k)), w_norm(size_t(n * k)), w_scaled(size_t(n * k));
    moe_route(logits.data(), n, ne, k, false, 1.0f, ids.data(), w.data());
    moe_route(logits.data(), n, ne, k, true, 2.5f, ids_norm.data(), w_norm.data());
    EXPECT_EQ(ids, ids_norm);  // neither changes the choice
    moe_route(logits.data(), n, ne, k, false, 2.5f, ids.data(), w_scaled.data());
    for (int64_t t = 0; t < n; ++t) {
        double sum = 0, sum_norm = 0;
        for (int64_t j = 0; j < k; ++j) {
            const size_t i = size_t(t * k + j);
            sum += w[i];
            sum_norm += w_norm[i];
            EXPECT_NEAR(w_scaled[i], 2.5 * w[i], 1e-6 * w_scaled[i]);
            if (j > 0) {
                EXPECT_LE(w[i], w[i - 1]);  // rank order
            }
        }
        EXPECT_LT(sum, 1.0);  // not normalized: a part of the probability mass
        EXPECT_NEAR(sum_norm, 2.5, 1e-5);
        for (int64_t j = 0; j < k; ++j) {
            const size_t i = size_t(t * k + j);
            EXPECT_NEAR(w_norm[i], 2.5 * w[i] / sum, 1e-6 * w_norm[i]);
        }
    }
}

// ---- the layer --------------------------------------------------------------------------------

class MoeFfnTest : public ::testing::TestWithParam<dtype> {};

TEST_P(MoeFfnTest, MatchesReference) {
    const dtype t = GetParam();
    const int64_t n_expert = 10, k = 3;
    for (int64_t n_shared : {0, 2}) {
        for (bool norm : {false, true}) {
            layer L = make_layer(t, n_expert, k, n_shared, 100 + uint64_t(n_shared) * 10 + uint64_t(norm), norm,
                                 norm ? 1.0f : 2.0f);
            ASSERT_EQ(moe_check(L.w), "");
            for (int64_t n : {1, 7, 64}) {
                std::vector<float> h = test::random_floats(n * n_embd, 500 + uint64_t(n), 1.0f);
                ref_result want = ref_moe(L.ref, h.data(), n);
                for (cpu::isa i : supported_isas()) {
                    isa_scope scope(i);
                    thread_pool pool(2);
                    moe_scratch s(L.w, n);
                    std::vector<float> out(size_t(n * n_embd), -7.0f);
                    moe_ffn(L.w, h.data(), n, out.data(), s, pool);
                    const std::string where = std::string(dtype_name(t)) + " isa " + cpu::isa_name(i) +
                                              " n " + std::to_string(n) + " shared " + std::to_string(n_shared) +
                                              " norm " + std::to_string(norm);
                    for (int64_t j = 0; j < n * k; ++j) {
                        ASSERT_EQ(s.ids[size_t(j)], want.ids[size_t(j)]) << where << " slot " << j;
                        EXPECT_NEAR(s.weights[size_t(j)], want.weights[size_t(j)], 1e-5 * want.weights[size_t(j)])
                            << where << " slot " << j;
                    }
                    EXPECT_LE(test::nmse_norm(out.data(), want.out.data(), n * n_embd), tolerance(t, n)) << where;
                }
            }
        }
    }
}

// A batch equals its rows evaluated alone: grouping changes which rows share a matmul, not
// the arithmetic (bf16 dot products off, the one kernel path that depends on the row count).
TEST_P(MoeFfnTest, GroupedEqualsPerToken) {
    const dtype t = GetParam();
    no_bf16_dot_scope no_bf16;
    const int64_t n = 64, n_expert = 8, k = 2;
    for (int64_t n_shared : {0, 1}) {
        layer L = make_layer(t, n_expert, k, n_shared, 300 + uint64_t(n_shared));
        std::vector<float> h = test::random_floats(n * n_embd, 17, 1.0f);
        thread_pool pool(2);
        moe_scratch s(L.w, n);
        std::vector<float> batch(size_t(n * n_embd)), row(static_cast<size_t>(n_embd));
        moe_ffn(L.w, h.data(), n, batch.data(), s, pool);
        const std::vector<int32_t> batch_ids(s.ids.begin(), s.ids.begin() + n * k);
        EXPECT_GT(s.last_experts_read, 1);
        for (int64_t tok = 0; tok < n; ++tok) {
            moe_ffn(L.w, h.data() + tok * n_embd, 1, row.data(), s, pool);
            for (int64_t j = 0; j < k; ++j) EXPECT_EQ(s.ids[size_t(j)], batch_ids[size_t(tok * k + j)]) << tok;
            EXPECT_EQ(s.last_experts_read, k);
            EXPECT_LE(test::nmse_norm(batch.data() + tok * n_embd, row.data(), n_embd), 1e-6)
                << dtype_name(t) << " token " << tok << " shared " << n_shared;
        }
    }
}

TEST_P(MoeFfnTest, ThreadCountsGiveIdenticalBytes) {
    const dtype t = GetParam();
    const int64_t n_expert = 10, k = 3;
    for (int64_t n_shared : {0, 2}) {
        layer L = make_layer(t, n_expert, k, n_shared, 700 + uint64_t(n_shared));
        for (int64_t n : {1, 7, 64}) {
            std::vector<float> h = test::random_floats(n * n_embd, 900 + uint64_t(n), 1.0f);
            std::vector<float> first;
            for (int n_threads : {1, 2, 3}) {
                thread_pool pool(n_threads);
                moe_scratch s(L.w, n);
                std::vector<float> out(size_t(n * n_embd));
                moe_ffn(L.w, h.data(), n, out.data(), s, pool);
                if (first.empty()) {
                    first = out;
                } else {
                    EXPECT_EQ(std::memcmp(out.data(), first.data(), out.size() * sizeof(float)), 0)
                        << dtype_name(t) << " threads " << n_threads << " n " << n << " shared " << n_shared;
                }
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MoeFfnTest,
                         ::testing::Values(dtype::f32, dtype::f16, dtype::q8_0, dtype::q4_0, dtype::q4_k),
                         [](const ::testing::TestParamInfo<dtype>& info) { return std::string(dtype_name(info.param)); });

// Every token chooses the same experts (equal logits: the lowest indices); the others are
// poisoned with NaN weights, so reading them into the sum would show, and the counter says
// they were not evaluated at all.
TEST(MoeFfn, ExpertsNoTokenChoseAreNotRead) {
    const int64_t n_expert = 8, k = 3, n = 16;
    layer L = make_layer(dtype::f32, n_expert, k, 1, 41);
    std::fill(L.router.ref.f.begin(), L.router.ref.f.end(), 0.0f);
    std::memset(L.router.bytes.data(), 0, L.router.bytes.size());
    const size_t per_expert = size_t(n_ff_exp * n_embd);
    for (stack* st : {&L.gate, &L.up, &L.down}) {
        float* f = reinterpret_cast<float*>(st->bytes.data());
        std::fill(f + k * per_expert, f + n_expert * per_expert, std::numeric_limits<float>::quiet_NaN());
    }
    L.bind(n_expert, k, 1, false, 1.0f);
    std::vector<float> h = test::random_floats(n * n_embd, 3, 1.0f);
    ref_result want = ref_moe(L.ref, h.data(), n);
    thread_pool pool(2);
    moe_scratch s(L.w, n);
    std::vector<float> out(size_t(n * n_embd));
    moe_ffn(L.w, h.data(), n, out.data(), s, pool);
    for (int64_t tok = 0; tok < n; ++tok) {
        for (int64_t j = 0; j < k; ++j) {
            EXPECT_EQ(s.ids[size_t(tok * k + j)], j);
            EXPECT_FLOAT_EQ(s.weights[size_t(tok * k + j)], 1.0f / float(n_expert));
        }
    }
    for (float v : out) ASSERT_TRUE(std::isfinite(v));
    EXPECT_LE(test::nmse_norm(out.data(), want.out.data(), n * n_embd), 1e-5);
    EXPECT_EQ(s.last_experts_read, k);
    EXPECT_EQ(s.experts_read, k);
    EXPECT_EQ(s.calls, 1);
    for (int64_t e = 0; e < n_expert; ++e) EXPECT_EQ(s.expert_begin[size_t(e + 1)] - s.expert_begin[size_t(e)], e < k ? n : 0);
    moe_ffn(L.w, h.data(), 1, out.data(), s, pool);
    EXPECT_EQ(s.experts_read, 2 * k);
    EXPECT_EQ(s.calls, 2);

    // Random routing: exactly the distinct experts chosen are read.
    layer R = make_layer(dtype::q8_0, 16, 2, 0, 43);
    for (int64_t m : {1, 3, 40}) {
        std::vector<float> x = test::random_floats(m * n_embd, 50 + uint64_t(m), 1.0f);
        moe_scratch sr(R.w, m);
        std::vector<float> y(size_t(m * n_embd));
        moe_ffn(R.w, x.data(), m, y.data(), sr, pool);
        std::set<int32_t> chosen(sr.ids.begin(), sr.ids.begin() + m * 2);
        EXPECT_EQ(sr.last_experts_read, int64_t(chosen.size())) << m;
        if (m * 2 < 16) {
            EXPECT_LT(sr.last_experts_read, 16);
        }
    }
}

// Exact logit ties inside the layer: integer-valued rows and router weights make every logit
// an exact integer whatever the summation order; experts e and e + 3 have equal router rows,
// so each token's best group of equal experts is chosen lowest index first.
TEST(MoeFfn, ExactLogitTiesChooseTheLowerExpert) {
    const int64_t n_expert = 9, k = 4, n = 24;
    layer L = make_layer(dtype::f32, n_expert, k, 0, 61);
    std::vector<float> base = test::random_floats(3 * n_embd, 62, 2.49f);
    for (float& v : base) v = std::round(v);
    float* router = reinterpret_cast<float*>(L.router.bytes.data());
    for (int64_t e = 0; e < n_expert; ++e) {
        std::copy(base.begin() + (e % 3) * n_embd, base.begin() + (e % 3 + 1) * n_embd, router + e * n_embd);
        std::copy(base.begin() + (e % 3) * n_embd, base.begin() + (e % 3 + 1) * n_embd, L.router.ref.f.begin() + e * n_embd);
    }
    L.bind(n_expert, k, 0, true, 1.0f);
    std::vector<float> h = test::random_floats(n * n_embd, 63, 1.49f);
    for (float& v : h) v = std::round(v);
    ref_result want = ref_moe(L.ref, h.data(), n);
    thread_pool pool(2);
    moe_scratch s(L.w, n);
    std::vector<float> out(size_t(n * n_embd));
    moe_ffn(L.w, h.data(), n, out.data(), s, pool);
    int separated = 0;  // tokens whose three groups have distinct logits
    for (int64_t tok = 0; tok < n; ++tok) {
        const float* lg = s.logits.data() + tok * n_expert;
        if (lg[0] != lg[1] && lg[1] != lg[2] && lg[0] != lg[2]) {
            // The best group's three experts, then the lowest of the second group.
            const int32_t g = want.ids[size_t(tok * k)];
            EXPECT_LT(g, 3);
            EXPECT_EQ(want.ids[size_t(tok * k + 1)], g + 3);
            EXPECT_EQ(want.ids[size_t(tok * k + 2)], g + 6);
            EXPECT_LT(want.ids[size_t(tok * k + 3)], 3);
            ++separated;
        }
        for (int64_t j = 0; j < k; ++j) EXPECT_EQ(s.ids[size_t(tok * k + j)], want.ids[size_t(tok * k + j)]) << tok;
        EXPECT_EQ(s.weights[size_t(tok * k)], s.weights[size_t(tok * k + 1)]);
        EXPECT_EQ(s.weights[size_t(tok * k)], s.weights[size_t(tok * k + 2)]);
    }
    EXPECT_GT(separated, n / 2);
    EXPECT_LE(test::nmse_norm(out.data(), want.out.data(), n * n_embd), 1e-5);
}

// ---- expert views, layouts, contracts ---------------------------------------------------------

TEST(MoeExpert, ViewOffsets) {
    alignas(64) static uint8_t bytes[1];
    cpu::weight_view v{bytes, dtype::q4_k, 32, 512};
    const size_t mat = 32 * dtype_row_bytes(dtype::q4_k, 512);
    for (int64_t e : {0, 1, 5}) {
        cpu::weight_view x = moe_expert(v, e);
        EXPECT_EQ(static_cast<const uint8_t*>(x.data), bytes + size_t(e) * mat);
        EXPECT_EQ(x.n_out, 32);
        EXPECT_EQ(x.n_in, 512);
        EXPECT_EQ(x.type, dtype::q4_k);
    }
    v.layout = cpu::weight_layout::interleaved16;
    EXPECT_EQ(static_cast<const uint8_t*>(moe_expert(v, 3).data), bytes + 3 * mat);
    v.n_out = 24;  // groups of 16 would straddle experts
    EXPECT_EQ(moe_expert(v, 1).data, nullptr);
}

// Stacks repacked to interleaved16 as one (n_expert · n_out, n_in) matrix give the row-major
// result (the layouts' kernels agree to float rounding, as in test_kernels.cpp).
TEST(MoeFfn, InterleavedStacksEqualRowMajor) {
    for (dtype t : {dtype::q4_0, dtype::q8_0, dtype::q4_k, dtype::f16}) {
        const int64_t n_expert = 6, k = 2, n = 9;
        layer L = make_layer(t, n_expert, k, 1, 80);
        std::vector<std::vector<uint8_t>> copies;
        moe_weights wi = L.w;
        for (cpu::weight_view* v : {&wi.gate_exps, &wi.up_exps, &wi.down_exps, &wi.gate_sh, &wi.up_sh, &wi.down_sh}) {
            const int64_t n_mat = v == &wi.gate_sh || v == &wi.up_sh || v == &wi.down_sh ? 1 : n_expert;
            cpu::weight_view whole = *v;
            whole.n_out = v->n_out * n_mat;
            ASSERT_TRUE(cpu::can_interleave(whole)) << dtype_name(t);
            copies.emplace_back(cpu::interleaved_bytes(whole));
            cpu::weight_view packed = cpu::interleave(whole, copies.back().data(), 0, whole.n_out);
            packed.n_out = v->n_out;
            *v = packed;
        }
        ASSERT_EQ(moe_check(wi), "");
        std::vector<float> h = test::random_floats(n * n_embd, 81, 1.0f);
        thread_pool pool(2);
        moe_scratch s(L.w, n);
        std::vector<float> a(size_t(n * n_embd)), b(size_t(n * n_embd));
        moe_ffn(L.w, h.data(), n, a.data(), s, pool);
        moe_ffn(wi, h.data(), n, b.data(), s, pool);
        EXPECT_LE(test::nmse_norm(b.data(), a.data(), n * n_embd), 2e-6) << dtype_name(t);
    }
}

TEST(MoeFfn, InconsistentWeightsAreRejected) {
    layer L = make_layer(dtype::q8_0, 4, 2, 1, 90);
    EXPECT_EQ(moe_check(L.w), "");
    auto rejected = [&](auto edit) {
        moe_weights w = L.w;
        edit(w);
        return !moe_check(w).empty();
    };
    EXPECT_TRUE(rejected([](moe_weights& w) { w.n_used = 5; }));
    EXPECT_TRUE(rejected([](moe_weights& w) { w.n_used = 0; }));
    EXPECT_TRUE(rejected([](moe_weights& w) { w.n_expert = 3; }));  // router has 4 rows
    EXPECT_TRUE(rejected([](moe_weights& w) { w.up_exps.n_out = 128; }));
    EXPECT_TRUE(rejected([](moe_weights& w) { w.down_exps.n_in = 128; }));
    EXPECT_TRUE(rejected([](moe_weights& w) { w.up_sh.data = nullptr; }));  // partly shared
    EXPECT_TRUE(rejected([](moe_weights& w) { w.gate_exps.type = dtype::q5_0; }));
    EXPECT_FALSE(rejected([](moe_weights& w) { w.gate_sh = w.up_sh = w.down_sh = {}; }));  // no shared experts
    moe_weights bad = L.w;
    bad.n_used = 7;
    thread_pool pool(1);
    moe_scratch s(L.w, 2);
    std::vector<float> h = test::random_floats(2 * n_embd, 1, 1.0f), out(size_t(2 * n_embd), 0.0f);
    moe_ffn(bad, h.data(), 2, out.data(), s, pool);
    for (float v : out) ASSERT_TRUE(std::isnan(v));
}

// A scratch reserved for the largest batch is not reallocated by smaller ones.
TEST(MoeFfn, ScratchIsSizedOnce) {
    layer L = make_layer(dtype::q4_0, 8, 2, 1, 95);
    thread_pool pool(2);
    moe_scratch s(L.w, 32);
    const float* y = s.y.data();
    const float* act = s.act.data();
    std::vector<float> h = test::random_floats(32 * n_embd, 96, 1.0f), out(size_t(32 * n_embd));
    for (int64_t n : {32, 1, 5, 32}) moe_ffn(L.w, h.data(), n, out.data(), s, pool);
    EXPECT_EQ(s.y.data(), y);
    EXPECT_EQ(s.act.data(), act);
    EXPECT_EQ(s.max_tokens, 32);
}

}  // namespace
}  // namespace kvs
