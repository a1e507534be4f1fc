// Page pool and KV cache: exact page ids, ref counts, free order, copy-on-write, integrity.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/dtype.h"

#include "kv/kv_cache.h"
#include "kv/page_pool.h"
#include "reference_kv_quant.h"

using namespace kvs;

TEST(PagePool, AllocatesLowIdsFirstAndIsAllOrNothing) {
    page_pool pool(4);
    std::vector<int32_t> a;
    ASSERT_TRUE(pool.allocate(3, a));
    EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
    EXPECT_FALSE(pool.can_allocate(2));
    std::vector<int32_t> b;
    EXPECT_FALSE(pool.allocate(2, b));
    EXPECT_TRUE(b.empty());
    EXPECT_EQ(pool.n_free(), 1);
    EXPECT_TRUE(pool.check_integrity());
}

TEST(PagePool, LastFreedIsFirstReused) {
    page_pool pool(4);
    std::vector<int32_t> a;
    ASSERT_TRUE(pool.allocate(4, a));
    pool.unref(1);
    pool.unref(3);
    std::vector<int32_t> b;
    ASSERT_TRUE(pool.allocate(2, b));
    EXPECT_EQ(b, (std::vector<int32_t>{3, 1}));
    EXPECT_TRUE(pool.check_integrity());
}

TEST(PagePool, RefCountsKeepSharedPagesAlive) {
    page_pool pool(2);
    std::vector<int32_t> a;
    ASSERT_TRUE(pool.allocate(1, a));
    pool.ref(a[0]);
    EXPECT_EQ(pool.ref_count(a[0]), 2);
    pool.unref(a[0]);
    EXPECT_EQ(pool.n_free(), 1);
    pool.unref(a[0]);
    EXPECT_EQ(pool.n_free(), 2);
    EXPECT_TRUE(pool.check_integrity());
}

namespace {
kv_config tiny_config(int32_t n_pages) {
    kv_config c;
    c.n_layer = 2;
    c.n_kv_head = 2;
    c.head_dim = 4;
    c.page_size = 4;
    c.n_pages = n_pages;
    return c;
}
}  // namespace

TEST(KvCache, ReserveGrowsTablesAndRemoveFreesTailFirst) {
    auto kv = kv_cache::create(tiny_config(8)).value();
    int32_t s0 = kv->seq_add(), s1 = kv->seq_add();
    ASSERT_TRUE(kv->seq_reserve(s0, 9));  // 3 pages
    ASSERT_TRUE(kv->seq_reserve(s1, 4));  // 1 page
    EXPECT_EQ(kv->seq_pages(s0), (std::vector<int32_t>{0, 1, 2}));
    EXPECT_EQ(kv->seq_pages(s1), (std::vector<int32_t>{3}));
    EXPECT_FALSE(kv->seq_reserve(s1, 4 * 6));  // needs 5 more, 4 free
    EXPECT_EQ(kv->seq_pages(s1).size(), 1u);
    EXPECT_TRUE(kv->check_integrity());
    kv->seq_remove(s0);  // frees 2, 1, 0: page 0 is reused first
    int32_t s2 = kv->seq_add();
    EXPECT_EQ(s2, s0);
    ASSERT_TRUE(kv->seq_reserve(s2, 8));
    EXPECT_EQ(kv->seq_pages(s2), (std::vector<int32_t>{0, 1}));
    EXPECT_TRUE(kv->check_integrity());
}

TEST(KvCache, ForkSharesPagesAndWriteCopiesOnWrite) {
    auto kv = kv_cache::create(tiny_config(8)).value();
    int32_t a = kv->seq_add();
    ASSERT_TRUE(kv->seq_reserve(a, 6));  // pages 0, 1
    std::vector<float> k(8), v(8);
    for (int64_t slot = 0; slot < 6; ++slot) {
        for (int i = 0; i < 8; ++i) k[size_t(i)] = float(slot * 100 + i), v[size_t(i)] = -float(slot * 100 + i);
        for (int64_t l = 0; l < 2; ++l) kv->write(l, a, slot, k.data(), v.data());
    }
    int32_t b = kv->seq_fork(a);
    EXPECT_EQ(kv->seq_pages(b), kv->seq_pages(a));
    EXPECT_EQ(kv->pool().ref_count(0), 2);
    EXPECT_EQ(kv->pool().ref_count(1), 2);
    EXPECT_TRUE(kv->check_integrity());
    // b writes slot 6 (page 1, shared): page 1 is copied, page 0 stays shared.
    ASSERT_TRUE(kv->seq_prepare_write(b, 6, 7));
    EXPECT_EQ(kv->seq_pages(b)[0], 0);
    EXPECT_EQ(kv->seq_pages(b)[1], 2);
    EXPECT_EQ(kv->pool().ref_count(1), 1);
    EXPECT_EQ(kv->pool().ref_count(0), 2);
    // The copy holds the same rows as the original.
    const size_t kb = kv->layout().k_head_bytes(), vb = kv->layout().v_head_bytes();
    for (int64_t l = 0; l < 2; ++l)
        for (int64_t h = 0; h < 2; ++h) {
            EXPECT_EQ(std::memcmp(kv->k_block(l, 2, h), kv->k_block(l, 1, h), kb), 0);
            EXPECT_EQ(std::memcmp(kv->v_block(l, 2, h), kv->v_block(l, 1, h), vb), 0);
        }
    EXPECT_TRUE(kv->check_integrity());
    kv->seq_remove(a);
    EXPECT_EQ(kv->pool().ref_count(0), 1);
    EXPECT_EQ(kv->pool().n_free(), 8 - 2);
    kv->seq_remove(b);
    EXPECT_EQ(kv->pool().n_free(), 8);
    EXPECT_TRUE(kv->check_integrity());
}

TEST(KvCache, PrepareWriteIsAllOrNothingWhenPoolIsFull) {
    auto kv = kv_cache::create(tiny_config(2)).value();
    int32_t a = kv->seq_add();
    ASSERT_TRUE(kv->seq_reserve(a, 8));
    int32_t b = kv->seq_fork(a);
    EXPECT_FALSE(kv->seq_prepare_write(b, 0, 8));  // needs 2 copies, 0 free
    EXPECT_EQ(kv->seq_pages(b), kv->seq_pages(a));
    EXPECT_TRUE(kv->check_integrity());
}

TEST(KvCache, RandomOperationsKeepIntegrity) {
    auto kv = kv_cache::create(tiny_config(32)).value();
    std::mt19937 rng(7);
    std::vector<int32_t> live;
    std::vector<int64_t> len(64, 0);
    for (int step = 0; step < 2000; ++step) {
        int op = int(rng() % 4);
        if (live.size() > 40) op = 2;
        if (op == 0 || live.empty()) {
            live.push_back(kv->seq_add());
        } else if (op == 1) {
            int32_t s = live[rng() % live.size()];
            int64_t want = len[size_t(s)] + int64_t(rng() % 9);
            if (kv->seq_reserve(s, want)) len[size_t(s)] = std::max(len[size_t(s)], want);
        } else if (op == 2) {
            size_t i = rng() % live.size();
            kv->seq_remove(live[i]);
            len[size_t(live[i])] = 0;
            live.erase(live.begin() + long(i));
        } else {
            int32_t s = live[rng() % live.size()];
            int32_t f = kv->seq_fork(s);
            len[size_t(f)] = len[size_t(s)];
            live.push_back(f);
            if (len[size_t(f)] > 0) kv->seq_prepare_write(f, len[size_t(f)] - 1, len[size_t(f)]);
        }
        ASSERT_TRUE(kv->check_integrity()) << "step " << step << ": " << kv->check_integrity().message();
    }
    for (int32_t s : live) kv->seq_remove(s);
    EXPECT_EQ(kv->pool().n_free(), 32);
}

class KvCacheFormat : public ::testing::TestWithParam<dtype> {};

TEST_P(KvCacheFormat, WritesRoundToTheFormatAndSurviveCopyOnWrite) {
    // Rows written through the cache read back as the format's rounding of the input, in
    // every layer, KV head and slot (odd head size and page size: the 16-bit layouts pad
    // both), and a copy-on-write copy reads back the same.
    kv_config c;
    c.n_layer = 2;
    c.n_kv_head = 3;
    c.head_dim = 5;
    c.page_size = 3;
    c.n_pages = 8;
    c.type = GetParam();
    auto kv = kv_cache::create(c).value();
    EXPECT_EQ(kv->type(), GetParam());
    const int32_t a = kv->seq_add();
    ASSERT_TRUE(kv->seq_reserve(a, 7));
    auto value = [](int64_t l, int64_t slot, int64_t i, bool is_v) { return (is_v ? -1.0f : 1.0f) * (0.1f + float(l * 1000 + slot * 10 + i) / 7.0f); };
    std::vector<float> k(15), v(15);
    for (int64_t slot = 0; slot < 7; ++slot)
        for (int64_t l = 0; l < 2; ++l) {
            for (int64_t i = 0; i < 15; ++i) k[size_t(i)] = value(l, slot, i, false), v[size_t(i)] = value(l, slot, i, true);
            kv->write(l, a, slot, k.data(), v.data());
        }
    auto rounded = [&](float x) {
        switch (GetParam()) {
            case dtype::f16: return f16_to_f32(f32_to_f16(x));
            case dtype::bf16: return bf16_to_f32(f32_to_bf16(x));
            default: return x;  // quantized formats: compared with the float64 quantizer below
        }
    };
    auto kv_page_layout_quantized = [] { return cpu::kv_page_layout::quantized(GetParam()); };
    auto check = [&](int32_t seq) {
        for (int64_t slot = 0; slot < 7; ++slot) {
            const int32_t page = kv->seq_pages(seq)[size_t(slot / 3)];
            for (int64_t l = 0; l < 2; ++l)
                for (int64_t h = 0; h < 3; ++h)
                    for (int64_t d = 0; d < 5; ++d) {
                        const float kr = cpu::kv_load_k(kv->layout(), kv->k_block(l, page, h), slot % 3, d);
                        const float vr = cpu::kv_load_v(kv->layout(), kv->v_block(l, page, h), slot % 3, d);
                        // The kernel's view addresses the same block.
                        EXPECT_EQ(kv->view(l).k_block(page, h), kv->k_block(l, page, h));
                        EXPECT_EQ(kv->view(l).v_block(page, h), kv->v_block(l, page, h));
                        if (kv_page_layout_quantized()) {
                            // Each (token, head) row of 5 is one group.
                            std::vector<float> kx(5), vx(5);
                            for (int64_t i = 0; i < 5; ++i) kx[size_t(i)] = value(l, slot, h * 5 + i, false), vx[size_t(i)] = value(l, slot, h * 5 + i, true);
                            EXPECT_NEAR(kr, test::reference_quantize_row(GetParam(), kx.data(), 5)[size_t(d)], 1e-5);
                            EXPECT_NEAR(vr, test::reference_quantize_row(GetParam(), vx.data(), 5)[size_t(d)], 1e-5);
                            continue;
                        }
                        EXPECT_EQ(kr, rounded(value(l, slot, h * 5 + d, false)));
                        EXPECT_EQ(vr, rounded(value(l, slot, h * 5 + d, true)));
                    }
        }
    };
    check(a);
    const int32_t b = kv->seq_fork(a);
    ASSERT_TRUE(kv->seq_prepare_write(b, 0, 7));  // copies all three pages
    EXPECT_NE(kv->seq_pages(b), kv->seq_pages(a));
    check(b);
    EXPECT_TRUE(kv->check_integrity());
    EXPECT_EQ(kv->bytes_per_token() * 3, c.page_bytes());
}

INSTANTIATE_TEST_SUITE_P(Formats, KvCacheFormat,
                         ::testing::Values(dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0, dtype::q4_0, dtype::q4_1),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(KvCache, RejectsUnsupportedFormatAndParsesNames) {
    kv_config c = tiny_config(4);
    c.type = dtype::q4_k;
    auto r = kv_cache::create(c);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.message().find("q4_k"), std::string::npos) << r.message();
    // Quantized formats need head_dim < 32 or a multiple of 32.
    c.type = dtype::q8_0;
    c.head_dim = 40;
    r = kv_cache::create(c);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.message().find("head_dim 40"), std::string::npos) << r.message();
    dtype t;
    EXPECT_TRUE(kv_type_from_name("BF16", &t));
    EXPECT_EQ(t, dtype::bf16);
    EXPECT_TRUE(kv_type_from_name("f16", &t));
    EXPECT_EQ(t, dtype::f16);
    EXPECT_TRUE(kv_type_from_name("Q8_0", &t));
    EXPECT_EQ(t, dtype::q8_0);
    EXPECT_TRUE(kv_type_from_name("q4_1", &t));
    EXPECT_EQ(t, dtype::q4_1);
    EXPECT_FALSE(kv_type_from_name("q5_k", &t));
}

TEST(KvCache, RejectsBadConfig) {
    kv_config c = tiny_config(0);
    auto r = kv_cache::create(c);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.message().find("at least one page"), std::string::npos);
}
