// Paged attention: the online-softmax kernel against the float64 reference over random page
// tables (GQA, MQA, MHA, several sequences, causal lengths), the (O, LSE) merge, and KIVI
// packed pages against float64 attention over the reference-dequantized K and V.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "core/dtype.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_quant.h"
#include "kernels/cpu/ops.h"
#include "reference_kv_quant.h"
#include "test_util.h"

using namespace kvs;

namespace {

struct paged_setup {
    int64_t n_pages, n_kv_head, page_size, head_dim, n_head;
    std::vector<float> k, v, q;
    std::vector<int32_t> indptr, ids, q_seq, q_len;
    std::vector<int32_t> q_begin;     // (n_q) or empty: every row from slot 0
    std::vector<int32_t> head_entry;  // (n_seq, n_kv_head) or empty: each head reads its sequence's pages
};

// n_seq sequences of the given lengths; pages shuffled so tables are non-contiguous.
paged_setup make_setup(int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t page_size,
                       const std::vector<int64_t>& seq_lens, int64_t queries_per_seq, uint64_t seed) {
    paged_setup s;
    s.n_head = n_head;
    s.n_kv_head = n_kv_head;
    s.head_dim = head_dim;
    s.page_size = page_size;
    int64_t total_pages = 0;
    for (int64_t len : seq_lens) total_pages += (len + page_size - 1) / page_size;
    s.n_pages = total_pages + 3;
    const size_t elems = size_t(s.n_pages * n_kv_head * page_size * head_dim);
    s.k = test::random_floats(int64_t(elems), seed, 1.0f);
    s.v = test::random_floats(int64_t(elems), seed + 1, 1.0f);
    std::vector<int32_t> perm(size_t(s.n_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(unsigned(seed)));
    s.indptr.push_back(0);
    size_t next = 0;
    for (size_t i = 0; i < seq_lens.size(); ++i) {
        int64_t np = (seq_lens[i] + page_size - 1) / page_size;
        for (int64_t p = 0; p < np; ++p) s.ids.push_back(perm[next++]);
        s.indptr.push_back(int32_t(s.ids.size()));
        for (int64_t r = 0; r < queries_per_seq; ++r) {
            s.q_seq.push_back(int32_t(i));
            // causal rows: the last queries_per_seq tokens of the sequence
            s.q_len.push_back(int32_t(std::max<int64_t>(0, seq_lens[i] - queries_per_seq + 1 + r)));
        }
    }
    s.q = test::random_floats(int64_t(s.q_seq.size()) * n_head * head_dim, seed + 2, 1.0f);
    return s;
}

cpu::attention_batch batch_of(const paged_setup& s) {
    cpu::attention_batch b;
    b.n_q = int64_t(s.q_seq.size());
    b.n_head = s.n_head;
    b.q = s.q.data();
    b.q_seq = s.q_seq.data();
    b.q_kv_len = s.q_len.data();
    b.q_kv_begin = s.q_begin.empty() ? nullptr : s.q_begin.data();
    b.seq_head_entry = s.head_entry.empty() ? nullptr : s.head_entry.data();
    b.page_indptr = s.indptr.data();
    b.page_ids = s.ids.data();
    b.scale = 1.0f / std::sqrt(float(s.head_dim));
    return b;
}

cpu::paged_kv_view view_of(const paged_setup& s) {
    return {s.k.data(), s.v.data(), s.n_kv_head, s.page_size, s.head_dim, dtype::f32, 0, std::nullopt};
}

using test::packed_kv;
packed_kv pack(const paged_setup& s, dtype type, bool head_major = true) {
    return test::pack_kv(s.k, s.v, s.n_pages, s.n_kv_head, s.page_size, s.head_dim, type, head_major);
}

constexpr dtype kv_types[] = {dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0, dtype::q4_0, dtype::q4_1};
// K and V in different formats (-ctk / -ctv): V decoded tile by tile in its own format.
constexpr std::pair<dtype, dtype> mixed_kv_types[] = {{dtype::bf16, dtype::q4_0}, {dtype::f16, dtype::q8_0}, {dtype::q8_0, dtype::f16},
                                                      {dtype::f32, dtype::q4_1}, {dtype::q4_0, dtype::bf16}, {dtype::bf16, dtype::f32}};

}  // namespace

struct attn_case {
    int64_t n_head, n_kv_head, head_dim, page_size;
};

class AttentionPaged : public ::testing::TestWithParam<attn_case> {};

std::vector<cpu::isa> supported_isas() {
    std::vector<cpu::isa> out;
    for (cpu::isa i : {cpu::isa::scalar, cpu::isa::avx2, cpu::isa::avx512})
        if (cpu::isa_supported(i)) out.push_back(i);
    return out;
}

// Restores the default dispatch even when an assertion returns early.
struct isa_scope {
    explicit isa_scope(cpu::isa i) { cpu::isa_override(i); }
    ~isa_scope() { cpu::isa_reset(); }
};

// Normalized error bound of the kernel against the float64 reference over the same stored
// values. Every path computes in float32 except AVX-512 over bf16, which also rounds the
// scaled query and the probabilities to bf16 for vdpbf16ps (8-bit mantissas), and AVX-512 over
// quantized K, which quantizes the scaled query to int8 per group of 32 for vpdpbusd. Over
// KIVI pages (`kivi`: a view with kivi_bits set; `type` is then irrelevant) AVX-512 rounds the
// query, times the page's key channel scales, to int16 per group of 32 for vpdpwssd, and the
// probabilities, times the values' token scales, to int16 per tile and group: 2^-16 of the
// largest value, within 1e-4 (normalized) of float32.
bool rounds_query(dtype type, cpu::isa i, bool kivi = false) {
    return !kivi && (type == dtype::bf16 || cpu::kv_page_layout::quantized(type)) && i == cpu::isa::avx512;
}
double output_tolerance(dtype type, cpu::isa i, double tol, bool kivi = false) {
    if (kivi && i == cpu::isa::avx512) return std::max(tol, 1e-4);
    return rounds_query(type, i, kivi) ? std::max(tol, 8e-3) : tol;
}
float lse_tolerance(dtype type, cpu::isa i, float ref, bool kivi = false) {
    const float rel = rounds_query(type, i, kivi) ? 1e-2f : 1e-4f;
    return rel * std::max(1.0f, std::fabs(ref));
}

// The kernel on `view` against the float64 reference over the same stored values, on every
// ISA path and with 1-3 threads (output NMSE and each LSE; a row without KV must give -inf).
void expect_kernel_matches_reference(const cpu::attention_batch& b, const cpu::paged_kv_view& view, dtype type, double tol,
                                     const std::string& what) {
    const size_t n_out = size_t(b.n_q * b.n_head * view.head_dim);
    std::vector<float> o_ref(n_out), lse_ref(size_t(b.n_q * b.n_head));
    cpu::ref::attention_paged(b, view, o_ref.data(), lse_ref.data());
    for (cpu::isa i : supported_isas()) {
        isa_scope scope(i);
        for (int threads : {1, 2, 3}) {
            thread_pool pool(threads);
            std::vector<float> o(n_out, 7.0f), lse(lse_ref.size(), 7.0f);
            cpu::attention_paged(b, view, o.data(), lse.data(), pool);
            const std::string where = what + " " + cpu::isa_name(i) + " threads " + std::to_string(threads);
            EXPECT_LT(test::nmse_norm(o.data(), o_ref.data(), int64_t(n_out)), output_tolerance(type, i, tol)) << where;
            for (size_t j = 0; j < lse.size(); ++j) {
                if (std::isinf(lse_ref[j])) {
                    EXPECT_TRUE(std::isinf(lse[j]) && lse[j] < 0) << where;
                } else {
                    EXPECT_NEAR(lse[j], lse_ref[j], lse_tolerance(type, i, lse_ref[j])) << where << " index " << j;
                }
            }
        }
    }
}

// The kernel against the float64 reference on every KV format, both page layouts, every ISA
// path and with 1-3 threads. The reference reads the same stored (rounded) K and V, so this measures the
// kernel; what the rounding of K and V costs is measured by perplexity (docs/performance.md).
void expect_matches_reference(const paged_setup& s, double tol) {
    auto b = batch_of(s);
    std::vector<std::pair<dtype, std::optional<dtype>>> formats;
    for (dtype t : kv_types) formats.push_back({t, std::nullopt});
    for (auto [k, v] : mixed_kv_types) formats.push_back({k, v});
    for (auto [type, v_type] : formats)
    for (bool head_major : {true, false}) {
        packed_kv p = test::pack_kv(s.k, s.v, s.n_pages, s.n_kv_head, s.page_size, s.head_dim, type, head_major, v_type);
        expect_kernel_matches_reference(b, p.view, type, tol,
                                        std::string(dtype_name(type)) + (v_type ? std::string("/") + dtype_name(*v_type) : "") +
                                            (head_major ? " head-major" : " page-major"));
    }
}

TEST_P(AttentionPaged, MatchesFloat64Reference) {
    const attn_case c = GetParam();
    // Several sequences, causal rows (prefill-like blocks of rows of one sequence).
    expect_matches_reference(make_setup(c.n_head, c.n_kv_head, c.head_dim, c.page_size, {1, 17, 40, 100}, 5, 42), 1e-5);
    // Decode-like: one row per sequence, one long sequence (the KV range is split over
    // tasks and the partial states merged).
    expect_matches_reference(make_setup(c.n_head, c.n_kv_head, c.head_dim, c.page_size, {1300}, 1, 43), 1e-5);
    // Many rows of one sequence: several row blocks, uneven lengths inside a block.
    expect_matches_reference(make_setup(c.n_head, c.n_kv_head, c.head_dim, c.page_size, {90, 3}, 70, 44), 1e-5);
}

TEST(AttentionPaged, WideGroupsAndLargeScores) {
    // 100 query heads per KV head: more than one kernel call's query vectors (head chunks).
    expect_matches_reference(make_setup(100, 1, 16, 8, {30, 600}, 2, 5), 1e-5);
    // 40 heads per KV head (3 vectors of 16 lanes), odd head_dim, large scores (the online
    // softmax rescales often and exp must not overflow).
    paged_setup s = make_setup(40, 1, 19, 5, {77}, 3, 6);
    for (float& x : s.q) x *= 30.0f;
    expect_matches_reference(s, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Heads, AttentionPaged,
                         ::testing::Values(attn_case{8, 8, 16, 16},   // MHA
                                           attn_case{8, 4, 8, 16},    // GQA (stories260K)
                                           attn_case{8, 1, 32, 4},    // MQA, small pages
                                           attn_case{4, 2, 64, 16},
                                           attn_case{6, 3, 128, 7},    // odd page size
                                           attn_case{4, 2, 6, 5}));    // quantized K groups of 6: no int8 Q·Kᵀ, K decoded

// Sliding windows: each row sees only slots [q_kv_begin, q_kv_len) (window and StreamingLLM
// policies). Begins anywhere in a page, equal to the length (no slot) or 0, rows of one block
// with different begins, and long decode rows whose split KV range starts past the window.
TEST_P(AttentionPaged, WindowRowsMatchFloat64Reference) {
    const attn_case c = GetParam();
    for (const auto& [lens, rows, seed] : {std::tuple<std::vector<int64_t>, int64_t, uint64_t>{{1, 17, 40, 100}, 5, 51},
                                           {{1300}, 1, 52},
                                           {{90, 3}, 70, 53}}) {
        paged_setup s = make_setup(c.n_head, c.n_kv_head, c.head_dim, c.page_size, lens, rows, seed);
        std::mt19937 rng{unsigned(seed)};
        for (int32_t len : s.q_len) s.q_begin.push_back(int32_t(rng() % uint32_t(len + 1)));
        s.q_begin[0] = 0;
        if (s.q_begin.size() > 1) s.q_begin[1] = s.q_len[1];  // sees nothing
        expect_matches_reference(s, 1e-5);
    }
}

// A window that starts on a page boundary equals the same rows over a page table that begins
// at that page (checked without the reference, which shares the batch description).
TEST(AttentionPaged, WindowEqualsTableStartingAtTheWindow) {
    const int64_t ps = 8, hd = 32;
    paged_setup s = make_setup(8, 2, hd, ps, {200}, 3, 61);
    thread_pool pool(2);
    const size_t n_out = size_t(3 * 8 * hd);
    s.q_begin.assign(3, int32_t(5 * ps));
    std::vector<float> o_win(n_out), lse_win(24);
    cpu::attention_paged(batch_of(s), view_of(s), o_win.data(), lse_win.data(), pool);
    paged_setup tail = s;
    tail.q_begin.clear();
    tail.ids.assign(s.ids.begin() + 5, s.ids.end());
    tail.indptr = {0, int32_t(tail.ids.size())};
    for (int32_t& l : tail.q_len) l -= int32_t(5 * ps);
    std::vector<float> o_tail(n_out), lse_tail(24);
    cpu::attention_paged(batch_of(tail), view_of(tail), o_tail.data(), lse_tail.data(), pool);
    EXPECT_LT(test::nmse_norm(o_win.data(), o_tail.data(), int64_t(n_out)), 1e-6);
    for (size_t i = 0; i < lse_win.size(); ++i) EXPECT_NEAR(lse_win[i], lse_tail[i], 1e-5f);
}

// Per-head page selection: KV head h of a sequence reads another CSR entry's pages (Quest
// hands each head the pages it selected); dense sequences of the same batch are unaffected.
TEST_P(AttentionPaged, PerHeadPagesMatchFloat64Reference) {
    const attn_case c = GetParam();
    paged_setup s = make_setup(c.n_head, c.n_kv_head, c.head_dim, c.page_size, {300, 45}, 1, 71);
    std::mt19937 rng(71);
    const int32_t n_seq = int32_t(s.indptr.size()) - 1;
    s.head_entry.resize(size_t(n_seq * c.n_kv_head));
    for (int32_t q = 0; q < n_seq; ++q)
        for (int64_t h = 0; h < c.n_kv_head; ++h) s.head_entry[size_t(q * c.n_kv_head + h)] = q;
    // Sequence 0's heads each read a random subset of its pages (in order, the last one kept).
    const int32_t n_pages0 = s.indptr[1] - s.indptr[0];
    int32_t min_len = s.q_len[0];
    for (int64_t h = 0; h < c.n_kv_head; ++h) {
        std::vector<int32_t> pick;
        for (int32_t p = 0; p + 1 < n_pages0; ++p)
            if (rng() % 3 == 0) pick.push_back(s.ids[size_t(s.indptr[0] + p)]);
        pick.push_back(s.ids[size_t(s.indptr[1] - 1)]);
        s.head_entry[size_t(h)] = int32_t(s.indptr.size()) - 1;
        s.ids.insert(s.ids.end(), pick.begin(), pick.end());
        s.indptr.push_back(int32_t(s.ids.size()));
        const int32_t last_rows = s.q_len[0] - (n_pages0 - 1) * int32_t(c.page_size);
        min_len = std::min<int32_t>(min_len, int32_t(pick.size() - 1) * int32_t(c.page_size) + last_rows);
    }
    s.q_len[0] = min_len;  // every head's list holds at least this many slots
    expect_matches_reference(s, 1e-5);
    // Head h of sequence 0 equals plain attention over its entry.
    thread_pool pool(2);
    auto b = batch_of(s);
    std::vector<float> o(size_t(b.n_q * c.n_head * c.head_dim)), lse(size_t(b.n_q * c.n_head));
    cpu::attention_paged(b, view_of(s), o.data(), lse.data(), pool);
    const int64_t group = c.n_head / c.n_kv_head;
    for (int64_t h = 0; h < c.n_kv_head; ++h) {
        paged_setup one = s;
        one.head_entry.clear();
        one.q_seq = {s.head_entry[size_t(h)]};
        one.q_len = {s.q_len[0]};
        one.q.assign(s.q.begin(), s.q.begin() + c.n_head * c.head_dim);
        std::vector<float> o1(size_t(c.n_head * c.head_dim)), lse1(size_t(c.n_head));
        cpu::attention_paged(batch_of(one), view_of(one), o1.data(), lse1.data(), pool);
        const int64_t off = h * group * c.head_dim;
        EXPECT_LT(test::nmse_norm(o.data() + off, o1.data() + off, group * c.head_dim), 1e-6) << "head " << h;
    }
}

TEST(AttentionPaged, HalfFormatsStayCloseToF32) {
    // What storing K and V in 16 bits costs, against the float64 reference over the f32
    // values: f16 keeps 11 significant bits, bf16 8 (plus the bf16 rounding of Q and P on
    // AVX-512), so the normalized output error is ~2^-11 and ~2^-8 at most.
    paged_setup s = make_setup(8, 2, 64, 16, {300, 41}, 4, 11);
    auto b = batch_of(s);
    const size_t n_out = size_t(b.n_q * s.n_head * s.head_dim);
    std::vector<float> o_ref(n_out), lse_ref(size_t(b.n_q * s.n_head));
    cpu::ref::attention_paged(b, view_of(s), o_ref.data(), lse_ref.data());
    thread_pool pool(2);
    for (dtype type : {dtype::f16, dtype::bf16}) {
        packed_kv p = pack(s, type);
        std::vector<float> o(n_out), lse(lse_ref.size());
        cpu::attention_paged(b, p.view, o.data(), lse.data(), pool);
        const double err = test::nmse_norm(o.data(), o_ref.data(), int64_t(n_out));
        EXPECT_LT(err, type == dtype::f16 ? 1e-3 : 1e-2) << dtype_name(type);
        EXPECT_GT(err, 0.0) << dtype_name(type) << ": 16-bit storage should round something";
    }
}

// A keys-only group (MLA's latent: kv_page_layout::v_is_k): V is read from K's rows. In every
// format, both page layouts, every ISA path and 1-3 threads, the kernel matches the float64
// reference, and that reference equals the reference over an ordinary cache holding V = K (so
// V really is K, in K's row layout, 16-bit formats included). MQA groups as MLA has them.
TEST(AttentionPaged, KeysOnlyGroupsReadValuesFromTheKeys) {
    struct shape {
        int64_t n_head, head_dim, page_size;
        std::vector<int64_t> lens;
        int64_t rows;
    };
    for (const shape& sh : {shape{16, 64, 16, {700}, 1}, shape{16, 96, 7, {40, 13}, 5}, shape{4, 576, 16, {300}, 2}, shape{3, 18, 5, {77}, 9}}) {
        const paged_setup s = make_setup(sh.n_head, 1, sh.head_dim, sh.page_size, sh.lens, sh.rows, uint64_t(sh.head_dim));
        const auto b = batch_of(s);
        const size_t n_out = size_t(b.n_q * s.n_head * s.head_dim);
        for (dtype type : kv_types)
            for (bool head_major : {true, false}) {
                const std::string what = std::string(dtype_name(type)) + " hd " + std::to_string(sh.head_dim) + (head_major ? " head-major" : " page-major");
                const packed_kv keys = test::pack_kv(s.k, s.k, s.n_pages, 1, s.page_size, s.head_dim, type, head_major, std::nullopt, true);
                const packed_kv both = test::pack_kv(s.k, s.k, s.n_pages, 1, s.page_size, s.head_dim, type, head_major);
                EXPECT_TRUE(keys.v.empty());
                std::vector<float> o_ref(n_out), lse_ref(size_t(b.n_q * s.n_head)), o_both(n_out), lse_both(lse_ref.size());
                cpu::ref::attention_paged(b, keys.view, o_ref.data(), lse_ref.data());
                cpu::ref::attention_paged(b, both.view, o_both.data(), lse_both.data());
                ASSERT_EQ(o_ref, o_both) << what;
                expect_kernel_matches_reference(b, keys.view, type, 1e-5, what);
            }
    }
}

TEST(AttentionPaged, RowWithoutKvGivesZeroAndMinusInf) {
    paged_setup s = make_setup(2, 1, 8, 4, {4}, 1, 3);
    s.q_len[0] = 0;
    thread_pool pool(1);
    auto b = batch_of(s);
    std::vector<float> o(16, 1.0f), lse(2, 0.0f);
    cpu::attention_paged(b, view_of(s), o.data(), lse.data(), pool);
    for (float x : o) EXPECT_EQ(x, 0.0f);
    for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
}

TEST(AttentionMerge, SplitKvMergedEqualsWhole) {
    // Attend to [0, 37) at once, and to [0, 20) plus [20, 37) separately through two page
    // tables over the same storage, then merge: equal to rounding.
    const int64_t page = 4, hd = 16;
    paged_setup s = make_setup(4, 2, hd, page, {40}, 1, 9);
    s.q_len[0] = 37;
    thread_pool pool(1);
    auto b = batch_of(s);
    auto kv = view_of(s);
    const int64_t n = 4 * hd;
    std::vector<float> o_all(static_cast<size_t>(n)), lse_all(4);
    cpu::attention_paged(b, kv, o_all.data(), lse_all.data(), pool);

    // First part: pages 0..4 (slots 0..19).
    std::vector<float> o_a(static_cast<size_t>(n)), lse_a(4), o_b(static_cast<size_t>(n)), lse_b(4);
    s.q_len[0] = 20;
    cpu::attention_paged(batch_of(s), kv, o_a.data(), lse_a.data(), pool);
    // Second part: a table starting at page 5 (slots 20..36 = 17 slots).
    paged_setup tail = s;
    tail.ids.assign(s.ids.begin() + 5, s.ids.end());
    tail.indptr = {0, int32_t(tail.ids.size())};
    tail.q_len[0] = 17;
    cpu::attention_paged(batch_of(tail), kv, o_b.data(), lse_b.data(), pool);
    cpu::attention_merge(o_a.data(), lse_a.data(), o_b.data(), lse_b.data(), 4, hd);
    EXPECT_LT(test::nmse_norm(o_a.data(), o_all.data(), n), 1e-6);
    for (int h = 0; h < 4; ++h) EXPECT_NEAR(lse_a[size_t(h)], lse_all[size_t(h)], 1e-5f);
}

// ---- KIVI packed pages ----------------------------------------------------------------------

namespace {

// A paged_setup's K and V pages (all full: each page's page_size tokens are one group) packed
// into KIVI blocks by the engine's quantizers, and the same pages decoded by the float64
// reference quantizer (tests/reference_kv_quant.h) in the f32 layout (n_pages, n_kv_head,
// page_size, head_dim) — what the attention over the packed view is compared against. `type`:
// the view's full-precision format (the cache's, which its packed view carries too), which a
// KIVI view must ignore.
struct kivi_kv {
    std::vector<uint8_t> k, v;
    cpu::paged_kv_view view;
    std::vector<double> kd, vd;
};

kivi_kv pack_kivi(const paged_setup& s, int bits, bool head_major, dtype type) {
    const int64_t nkv = s.n_kv_head, ps = s.page_size, hd = s.head_dim;
    const cpu::kv_page_layout lay{dtype::f32, nkv, ps, hd, std::nullopt, bits};
    kivi_kv r;
    r.k.assign(size_t(s.n_pages) * lay.k_page_bytes(), 0xFF);
    r.v.assign(size_t(s.n_pages) * lay.v_page_bytes(), 0xFF);
    r.view = {r.k.data(), r.v.data(), nkv, ps, hd, type, head_major ? s.n_pages : 0, std::nullopt, bits};
    r.kd.resize(s.k.size());
    r.vd.resize(s.v.size());
    for (int64_t p = 0; p < s.n_pages; ++p)
        for (int64_t h = 0; h < nkv; ++h) {
            const size_t off = size_t((p * nkv + h) * ps * hd);
            uint8_t* kb = r.k.data() + (r.view.k_block(p, h) - r.k.data());
            uint8_t* vb = r.v.data() + (r.view.v_block(p, h) - r.v.data());
            cpu::kivi_quantize_k(lay, s.k.data() + off, kb);
            cpu::kivi_quantize_v(lay, s.v.data() + off, vb);
            const test::kivi_reference rk = test::reference_kivi_keys(bits, s.k.data() + off, ps, hd);
            const test::kivi_reference rv = test::reference_kivi_values(bits, s.v.data() + off, ps, hd, std::min(ps, hd));
            std::copy(rk.decoded.begin(), rk.decoded.end(), r.kd.begin() + std::ptrdiff_t(off));
            std::copy(rv.decoded.begin(), rv.decoded.end(), r.vd.begin() + std::ptrdiff_t(off));
        }
    return r;
}

// Float64 attention of a batch straight from K and V rows: kv_row(row, slot, kv_head, is_v)
// gives the head_dim values of a slot the row attends to. o (n_q, n_head, hd), lse (n_q, n_head);
// a row with no slot gets 0 and -inf.
template <class Rows>
void attention_f64(const cpu::attention_batch& b, int64_t n_kv_head, int64_t hd, const Rows& kv_row, std::vector<double>& o,
                   std::vector<double>& lse) {
    const int64_t n_group = b.n_head / n_kv_head;
    o.assign(size_t(b.n_q * b.n_head * hd), 0.0);
    lse.assign(size_t(b.n_q * b.n_head), -std::numeric_limits<double>::infinity());
    for (int64_t r = 0; r < b.n_q; ++r) {
        const int64_t len = b.q_kv_len[r], begin = b.q_kv_begin ? std::min<int64_t>(b.q_kv_begin[r], len) : 0;
        if (begin >= len) continue;
        for (int64_t h = 0; h < b.n_head; ++h) {
            const int64_t kvh = h / n_group;
            const float* q = b.q + (r * b.n_head + h) * hd;
            std::vector<double> sc(size_t(len - begin));
            double mx = -std::numeric_limits<double>::infinity();
            for (int64_t t = begin; t < len; ++t) {
                const double* k = kv_row(r, t, kvh, false);
                double acc = 0;
                for (int64_t d = 0; d < hd; ++d) acc += double(q[d]) * k[d];
                mx = std::max(mx, sc[size_t(t - begin)] = acc * double(b.scale));
            }
            double sum = 0;
            for (double& x : sc) sum += (x = std::exp(x - mx));
            double* out = o.data() + (r * b.n_head + h) * hd;
            for (int64_t t = begin; t < len; ++t) {
                const double* v = kv_row(r, t, kvh, true);
                for (int64_t d = 0; d < hd; ++d) out[d] += sc[size_t(t - begin)] / sum * v[d];
            }
            lse[size_t(r * b.n_head + h)] = mx + std::log(sum);
        }
    }
}

// The kernel's (o, lse) against float64 ones, at the tolerance of `i` over KIVI pages.
void expect_close(const std::vector<float>& o, const std::vector<float>& lse, const std::vector<double>& o_ref,
                  const std::vector<double>& lse_ref, cpu::isa i, double tol, const std::string& where) {
    EXPECT_LT(test::nmse_norm(o.data(), o_ref.data(), int64_t(o.size())), output_tolerance(dtype::f32, i, tol, true)) << where;
    for (size_t j = 0; j < lse.size(); ++j) {
        if (std::isinf(lse_ref[j])) {
            EXPECT_TRUE(std::isinf(lse[j]) && lse[j] < 0) << where << " index " << j;
            for (int64_t d = 0; d < int64_t(o.size() / lse.size()); ++d) EXPECT_EQ(o[j * (o.size() / lse.size()) + size_t(d)], 0.0f) << where;
        } else {
            EXPECT_NEAR(lse[j], lse_ref[j], lse_tolerance(dtype::f32, i, float(lse_ref[j]), true)) << where << " index " << j;
        }
    }
}

// Attention over KIVI views of s (2 and 4 bits, head- and page-major) on every ISA path and
// with 1-3 threads, against float64 attention over the reference-dequantized K and V.
void expect_kivi_matches_reference(const paged_setup& s, double tol) {
    const auto b = batch_of(s);
    const int64_t nkv = s.n_kv_head, ps = s.page_size, hd = s.head_dim;
    for (int bits : {2, 4}) {
        kivi_kv packed[2] = {pack_kivi(s, bits, true, dtype::bf16), pack_kivi(s, bits, false, dtype::f32)};
        const kivi_kv& kk = packed[0];
        const auto row = [&](int64_t r, int64_t t, int64_t kvh, bool is_v) {
            const int32_t page = s.ids[size_t(s.indptr[size_t(s.q_seq[size_t(r)])] + t / ps)];
            return (is_v ? kk.vd : kk.kd).data() + ((page * nkv + kvh) * ps + t % ps) * hd;
        };
        std::vector<double> o_ref, lse_ref;
        attention_f64(b, nkv, hd, row, o_ref, lse_ref);
        for (const kivi_kv& p : packed)
            for (cpu::isa i : supported_isas()) {
                isa_scope scope(i);
                for (int threads : {1, 2, 3}) {
                    thread_pool pool(threads);
                    std::vector<float> o(o_ref.size(), 7.0f), lse(lse_ref.size(), 7.0f);
                    cpu::attention_paged(b, p.view, o.data(), lse.data(), pool);
                    expect_close(o, lse, o_ref, lse_ref, i, tol,
                                 "kivi" + std::to_string(bits) + (p.view.head_major_pages ? " head-major " : " page-major ") + dtype_name(p.view.type) + " " + cpu::isa_name(i) +
                                     " threads " + std::to_string(threads));
                }
            }
    }
}

}  // namespace

class AttentionKivi : public ::testing::TestWithParam<attn_case> {};

// Several sequences with causal rows (the last rows of a sequence end inside its last page), and
// a decode-like row over 1300 slots (the KV range split over tasks and merged).
TEST_P(AttentionKivi, MatchesFloat64OverReferenceDequantized) {
    const attn_case c = GetParam();
    expect_kivi_matches_reference(make_setup(c.n_head, c.n_kv_head, c.head_dim, c.page_size, {1, 17, 40, 100}, 5, 81), 1e-5);
    expect_kivi_matches_reference(make_setup(c.n_head, c.n_kv_head, c.head_dim, c.page_size, {1300}, 1, 82), 1e-5);
}

// Windows: rows see [q_kv_begin, q_kv_len), begins anywhere in a page (odd rows of a page too),
// one row that sees nothing, and decode rows over 1300 slots whose windows start far in.
TEST_P(AttentionKivi, WindowRowsMatchFloat64OverReferenceDequantized) {
    const attn_case c = GetParam();
    for (const auto& [lens, rows, seed] : {std::tuple<std::vector<int64_t>, int64_t, uint64_t>{{17, 40, 100}, 5, 83}, {{1300}, 2, 84}}) {
        paged_setup s = make_setup(c.n_head, c.n_kv_head, c.head_dim, c.page_size, lens, rows, seed);
        std::mt19937 rng{unsigned(seed)};
        for (int32_t len : s.q_len) s.q_begin.push_back(int32_t(rng() % uint32_t(len + 1)));
        s.q_begin[0] = 0;
        s.q_begin[1] = s.q_len[1];  // sees nothing
        expect_kivi_matches_reference(s, 1e-5);
    }
}

INSTANTIATE_TEST_SUITE_P(Heads, AttentionKivi,
                         ::testing::Values(attn_case{8, 8, 8, 16},     // MHA, head_dim 8 < G: V groups of 8
                                           attn_case{8, 2, 64, 32},    // GQA
                                           attn_case{8, 1, 128, 16},   // MQA
                                           attn_case{6, 3, 32, 32},    // GQA, head_dim 32
                                           attn_case{4, 4, 128, 32},   // MHA
                                           attn_case{4, 1, 64, 16}));  // MQA

// What the engine does for a KIVI cache (src/model/kivi_attention.cpp): a sequence's oldest pages
// are read packed through the KIVI view, the rest in full precision through the f32 view, by two
// attention_paged calls over disjoint slot ranges, merged by LSE. Row r reads its first k_r pages
// packed: the packed call sees slots [begin, min(len, k_r · G)) of a table of the sequence's
// first max_r k_r packed pages; the full call sees a table from page min_r k_r on, its slots
// shifted down by that base: [max(begin, k_r · G) - base, max(len, k_r · G) - base). Rows of one
// sequence with different k_r read the pages in between packed or not. Every ISA, 1-3 threads,
// head- and page-major packed pages, against float64 attention over the concatenation
// (reference-dequantized pages, then the f32 ones).
TEST(AttentionKivi, PackedThenFullMergedEqualsWhole) {
    const int64_t n_head = 8, nkv = 2, hd = 64, ps = 32;
    // Two sequences: 300 slots (rows with 7 and 6 packed pages; a window inside the packed pages'
    // reach, one past it), 1300 slots (a long row with 36 packed pages, a window row that starts
    // past the packed pages, and a row that ends inside them: it reads no full page).
    paged_setup s = make_setup(n_head, nkv, hd, ps, {300, 1300}, 3, 91);
    s.q_len = {290, 299, 300, 1290, 1299, 1100};
    s.q_begin = {0, 100, 250, 0, 1200, 37};
    const std::vector<int64_t> k_pages = {7, 6, 7, 36, 36, 35};  // the last row reads no full page
    const int64_t n_q = int64_t(s.q_seq.size()), n_seq = int64_t(s.indptr.size()) - 1;
    std::vector<int64_t> k_min(size_t(n_seq), 1 << 30), k_max(size_t(n_seq), 0);
    for (int64_t r = 0; r < n_q; ++r) {
        k_min[size_t(s.q_seq[size_t(r)])] = std::min(k_min[size_t(s.q_seq[size_t(r)])], k_pages[size_t(r)]);
        k_max[size_t(s.q_seq[size_t(r)])] = std::max(k_max[size_t(s.q_seq[size_t(r)])], k_pages[size_t(r)]);
    }
    // Page tables and slot ranges of the two calls.
    std::vector<int32_t> p_indptr{0}, p_ids, f_indptr{0}, f_ids, p_len, f_begin, f_len;
    for (int64_t e = 0; e < n_seq; ++e) {
        for (int64_t i = 0; i < k_max[size_t(e)]; ++i) p_ids.push_back(s.ids[size_t(s.indptr[size_t(e)] + i)]);
        for (int64_t i = k_min[size_t(e)]; i < s.indptr[size_t(e) + 1] - s.indptr[size_t(e)]; ++i)
            f_ids.push_back(s.ids[size_t(s.indptr[size_t(e)] + i)]);
        p_indptr.push_back(int32_t(p_ids.size()));
        f_indptr.push_back(int32_t(f_ids.size()));
    }
    for (int64_t r = 0; r < n_q; ++r) {
        const int64_t len = s.q_len[size_t(r)], begin = s.q_begin[size_t(r)], split = k_pages[size_t(r)] * ps,
                      base = k_min[size_t(s.q_seq[size_t(r)])] * ps;
        p_len.push_back(int32_t(std::min(len, split)));
        f_begin.push_back(int32_t(std::max(begin, split) - base));
        f_len.push_back(int32_t(std::max(len, split) - base));
    }
    const cpu::attention_batch whole = batch_of(s);
    cpu::attention_batch pb = whole, fb = whole;
    pb.page_indptr = p_indptr.data();
    pb.page_ids = p_ids.data();
    pb.q_kv_len = p_len.data();
    fb.page_indptr = f_indptr.data();
    fb.page_ids = f_ids.data();
    fb.q_kv_begin = f_begin.data();
    fb.q_kv_len = f_len.data();
    const cpu::paged_kv_view full = view_of(s);
    for (int bits : {2, 4}) {
        kivi_kv packed[2] = {pack_kivi(s, bits, true, dtype::bf16), pack_kivi(s, bits, false, dtype::f32)};
        const kivi_kv& kk = packed[0];
        std::vector<double> kf(s.k.begin(), s.k.end()), vf(s.v.begin(), s.v.end());
        const auto row = [&](int64_t r, int64_t t, int64_t kvh, bool is_v) {
            const int32_t page = s.ids[size_t(s.indptr[size_t(s.q_seq[size_t(r)])] + t / ps)];
            const bool is_packed = t / ps < k_pages[size_t(r)];
            const std::vector<double>& src = is_v ? (is_packed ? kk.vd : vf) : (is_packed ? kk.kd : kf);
            return src.data() + ((page * nkv + kvh) * ps + t % ps) * hd;
        };
        std::vector<double> o_ref, lse_ref;
        attention_f64(whole, nkv, hd, row, o_ref, lse_ref);
        for (const kivi_kv& p : packed)
            for (cpu::isa i : supported_isas()) {
                isa_scope scope(i);
                for (int threads : {1, 2, 3}) {
                    thread_pool pool(threads);
                    std::vector<float> o(o_ref.size(), 7.0f), lse(lse_ref.size(), 7.0f), o_p(o.size(), 7.0f), lse_p(lse.size(), 7.0f);
                    cpu::attention_paged(fb, full, o.data(), lse.data(), pool);
                    cpu::attention_paged(pb, p.view, o_p.data(), lse_p.data(), pool);
                    cpu::attention_merge(o.data(), lse.data(), o_p.data(), lse_p.data(), n_q * n_head, hd);
                    expect_close(o, lse, o_ref, lse_ref, i, 1e-5,
                                 "kivi" + std::to_string(bits) + (p.view.head_major_pages ? " head-major " : " page-major ") + dtype_name(p.view.type) + " " + cpu::isa_name(i) +
                                     " threads " + std::to_string(threads));
                }
            }
    }
}
