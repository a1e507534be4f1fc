// Cascade attention: the planner finds rows sharing leading pages (exact groups and page
// lists), and shared-prefix + own-suffix attention merged by LSE equals plain paged attention.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cpu/ops.h"
#include "kv/cascade.h"
#include "model/cascade_attention.h"
#include "test_util.h"

using namespace kvs;

TEST(CascadePlan, GroupsDecodeRowsByTheirCommonLeadingPages) {
    // Sequences 0..2 share pages 7,8,9,10 then diverge; 3 shares only 7; 4 is unrelated;
    // 5 shares 7..10 but has two rows (a prefill chunk) so it is not grouped.
    const std::vector<std::vector<int32_t>> tables = {
        {7, 8, 9, 10, 20}, {7, 8, 9, 10, 11, 21}, {7, 8, 9, 10, 22}, {7, 30, 31, 32, 33}, {40, 41, 42, 43, 44}, {7, 8, 9, 10, 50}};
    std::vector<int32_t> indptr = {0}, ids;
    for (auto& t : tables) {
        ids.insert(ids.end(), t.begin(), t.end());
        indptr.push_back(int32_t(ids.size()));
    }
    std::vector<int32_t> q_seq = {0, 1, 2, 3, 4, 5, 5};
    std::vector<int32_t> kv_len = {70, 90, 66, 70, 70, 70, 71};  // page size 16
    auto plan = plan_cascade(int64_t(q_seq.size()), q_seq.data(), kv_len.data(), indptr.data(), ids.data(), 16);
    ASSERT_EQ(plan.groups.size(), 1u);
    EXPECT_EQ(plan.groups[0].rows, (std::vector<int32_t>{0, 1, 2}));
    EXPECT_EQ(plan.groups[0].shared_pages, (std::vector<int32_t>{7, 8, 9, 10}));
    EXPECT_EQ(plan.skip_pages, (std::vector<int32_t>{4, 4, 4, 0, 0, 0, 0}));
    // A row whose KV length does not cover the fourth page shortens the common run: 50 tokens
    // are 3 full pages, below min_shared_pages = 4, so no group.
    kv_len[2] = 50;
    plan = plan_cascade(int64_t(q_seq.size()), q_seq.data(), kv_len.data(), indptr.data(), ids.data(), 16);
    EXPECT_EQ(plan.groups.size(), 1u);
    EXPECT_EQ(plan.groups[0].rows, (std::vector<int32_t>{0, 1}));
    cascade_options strict;
    strict.min_rows = 3;
    plan = plan_cascade(int64_t(q_seq.size()), q_seq.data(), kv_len.data(), indptr.data(), ids.data(), 16, strict);
    EXPECT_TRUE(plan.empty());
}

namespace {

struct cascade_case {
    int64_t n_head, n_kv_head, head_dim, page_size, n_seq, shared_pages, own_max;
};

}  // namespace

class CascadeAttention : public ::testing::TestWithParam<cascade_case> {};

TEST_P(CascadeAttention, EqualsPlainPagedAttention) {
    const cascade_case c = GetParam();
    const int64_t own_pages_max = (c.own_max + c.page_size - 1) / c.page_size + 1;
    const int64_t n_pages = c.shared_pages + c.n_seq * own_pages_max + 2;
    const size_t elems = size_t(n_pages * c.n_kv_head * c.page_size * c.head_dim);
    auto k = test::random_floats(int64_t(elems), 1, 1.0f), v = test::random_floats(int64_t(elems), 2, 1.0f);
    std::vector<int32_t> indptr = {0}, ids, q_seq, kv_len;
    int32_t next = int32_t(c.shared_pages);
    for (int64_t s = 0; s < c.n_seq; ++s) {
        for (int32_t p = 0; p < c.shared_pages; ++p) ids.push_back(p);
        const int64_t own = 1 + (s * 7) % c.own_max;  // own tokens after the prefix
        for (int64_t p = 0; p < (own + c.page_size - 1) / c.page_size; ++p) ids.push_back(next++);
        indptr.push_back(int32_t(ids.size()));
        q_seq.push_back(int32_t(s));
        kv_len.push_back(int32_t(c.shared_pages * c.page_size + own));
    }
    auto q = test::random_floats(c.n_seq * c.n_head * c.head_dim, 3, 1.0f);
    cpu::attention_batch b;
    b.n_q = c.n_seq;
    b.n_head = c.n_head;
    b.q = q.data();
    b.q_seq = q_seq.data();
    b.q_kv_len = kv_len.data();
    b.page_indptr = indptr.data();
    b.page_ids = ids.data();
    b.scale = 1.0f / std::sqrt(float(c.head_dim));
    thread_pool pool(2);
    const size_t n_out = size_t(c.n_seq * c.n_head * c.head_dim);
    auto plan = plan_cascade(b.n_q, q_seq.data(), kv_len.data(), indptr.data(), ids.data(), c.page_size);
    ASSERT_EQ(plan.groups.size(), 1u);
    EXPECT_EQ(int64_t(plan.groups[0].shared_pages.size()), c.shared_pages);
    // Every KV format: the shared pass and the suffix passes read the same stored values. With
    // bf16 on AVX-512 the probabilities are rounded to bf16 relative to each pass's own running
    // max, so the two paths differ by that rounding (a few 1e-3), not more.
    for (dtype type : {dtype::f32, dtype::f16, dtype::bf16}) {
        test::packed_kv kv = test::pack_kv(k, v, n_pages, c.n_kv_head, c.page_size, c.head_dim, type);
        const bool rounded = type == dtype::bf16 && cpu::isa_active() == cpu::isa::avx512;
        std::vector<float> o_plain(n_out), lse_plain(size_t(c.n_seq * c.n_head)), o_cas(n_out), lse_cas(lse_plain.size());
        cpu::attention_paged(b, kv.view, o_plain.data(), lse_plain.data(), pool);
        cascade_scratch scratch;
        attention_with_cascade(b, kv.view, plan, o_cas.data(), lse_cas.data(), scratch, pool);
        EXPECT_LT(test::nmse_norm(o_cas.data(), o_plain.data(), int64_t(n_out)), rounded ? 8e-3 : 1e-5) << dtype_name(type);
        for (size_t i = 0; i < lse_plain.size(); ++i)
            EXPECT_NEAR(lse_cas[i], lse_plain[i], (rounded ? 1e-2f : 1e-4f) * std::max(1.0f, std::fabs(lse_plain[i])))
                << dtype_name(type) << " index " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CascadeAttention,
                         ::testing::Values(cascade_case{8, 4, 16, 16, 5, 6, 40},     // GQA
                                           cascade_case{32, 4, 64, 16, 12, 8, 20},   // TinyLlama heads
                                           cascade_case{4, 4, 32, 8, 3, 4, 8},       // MHA, small pages
                                           cascade_case{8, 1, 64, 16, 4, 5, 1}));    // MQA, one own token
