// The activation memory planner (model/activation_plan.h): on random lifetime sets no two
// buffers live at the same point share a byte, offsets are aligned and the arena lies between
// the largest buffer and the sum; forward_state's own plan obeys the same rules; and a forward
// pass through the planned arena gives bit for bit the logits (and every intermediate tensor)
// of a pass where no buffer shares bytes, whatever the state's capacity.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "model/activation_plan.h"
#include "model/llama.h"
#include "reference_model.h"
#include "stories_fixture.h"
#include "test_util.h"

using namespace kvs;

namespace {

bool bytes_overlap(size_t a, size_t a_bytes, size_t b, size_t b_bytes) {
    return a_bytes > 0 && b_bytes > 0 && a < b + b_bytes && b < a + a_bytes;
}

// Every rule of a plan over `bufs`; `what` names the case in failures.
void check_plan(const std::vector<activation_buffer>& bufs, const activation_plan& plan, size_t alignment, const std::string& what) {
    ASSERT_EQ(plan.offsets.size(), bufs.size()) << what;
    size_t largest = 0, sum = 0;
    for (size_t i = 0; i < bufs.size(); ++i) {
        EXPECT_EQ(plan.offsets[i] % alignment, 0u) << what << ": " << bufs[i].name;
        EXPECT_LE(plan.offsets[i] + bufs[i].bytes, plan.arena_bytes) << what << ": " << bufs[i].name;
        largest = std::max(largest, bufs[i].bytes);
        sum += (bufs[i].bytes + alignment - 1) / alignment * alignment;
    }
    EXPECT_EQ(plan.sum_bytes, sum) << what;
    EXPECT_EQ(plan.arena_bytes % alignment, 0u) << what;
    EXPECT_GE(plan.arena_bytes, largest) << what;
    EXPECT_LE(plan.arena_bytes, plan.sum_bytes) << what;
    for (size_t i = 0; i < bufs.size(); ++i)
        for (size_t j = i + 1; j < bufs.size(); ++j)
            if (lifetimes_overlap(bufs[i], bufs[j])) {
                EXPECT_FALSE(bytes_overlap(plan.offsets[i], bufs[i].bytes, plan.offsets[j], bufs[j].bytes))
                    << what << ": " << bufs[i].name << " [" << plan.offsets[i] << ", +" << bufs[i].bytes << ") and " << bufs[j].name
                    << " [" << plan.offsets[j] << ", +" << bufs[j].bytes << ") are live together";
            }
}

// The most bytes live at one program point, each buffer rounded up to `alignment` (with 1: no
// plan's arena is smaller).
size_t live_peak(const std::vector<activation_buffer>& bufs, size_t alignment) {
    int32_t last = 0;
    for (const activation_buffer& b : bufs)
        for (const live_range& r : b.live) last = std::max(last, r.last);
    size_t peak = 0;
    for (int32_t p = 0; p <= last; ++p) {
        size_t live = 0;
        for (const activation_buffer& b : bufs)
            for (const live_range& r : b.live)
                if (r.first <= p && p <= r.last) {
                    live += (b.bytes + alignment - 1) / alignment * alignment;
                    break;
                }
        peak = std::max(peak, live);
    }
    return peak;
}

// The heaviest set of pairwise-conflicting buffers (aligned bytes), by trying every subset:
// they must all lie apart, so no plan's arena is smaller. With buffers live over several ranges
// it can exceed the live peak (three buffers may conflict pairwise, never all at once).
size_t max_clique_bytes(const std::vector<activation_buffer>& bufs, size_t alignment) {
    const size_t n = bufs.size();
    EXPECT_LE(n, 20u);
    size_t best = 0;
    for (uint32_t set = 1; set < (uint32_t(1) << n); ++set) {
        size_t bytes = 0;
        bool clique = true;
        for (size_t i = 0; i < n && clique; ++i) {
            if (!(set >> i & 1)) continue;
            bytes += (bufs[i].bytes + alignment - 1) / alignment * alignment;
            for (size_t j = i + 1; j < n && clique; ++j)
                if ((set >> j & 1) && bufs[i].bytes && bufs[j].bytes && !lifetimes_overlap(bufs[i], bufs[j])) clique = false;
        }
        if (clique) best = std::max(best, bytes);
    }
    return best;
}

activation_buffer buf(const char* name, size_t bytes, std::vector<live_range> live) { return {name, bytes, std::move(live)}; }

}  // namespace

TEST(ActivationPlan, LifetimesOverlapOverEveryRange) {
    const activation_buffer a = buf("a", 8, {{0, 1}, {5, 6}});
    EXPECT_FALSE(lifetimes_overlap(a, buf("gap", 8, {{2, 4}})));
    EXPECT_TRUE(lifetimes_overlap(a, buf("touches", 8, {{4, 5}})));
    EXPECT_TRUE(lifetimes_overlap(a, buf("inside", 8, {{1, 1}})));
    EXPECT_TRUE(lifetimes_overlap(a, buf("around", 8, {{-3, 9}})));
    EXPECT_FALSE(lifetimes_overlap(a, buf("never", 8, {})));
}

TEST(ActivationPlan, GreedyBySizeReusesDeadBytes) {
    // a and b never live together: both at 0. c lives with both: after the larger, aligned.
    std::vector<activation_buffer> bufs = {buf("a", 100, {{0, 1}}), buf("b", 200, {{2, 3}}), buf("c", 50, {{1, 2}})};
    activation_plan p = plan_activations(bufs);
    EXPECT_EQ(p.offsets, (std::vector<size_t>{0, 0, 256}));
    EXPECT_EQ(p.arena_bytes, 320u);
    EXPECT_EQ(p.sum_bytes, 128u + 256u + 64u);
    check_plan(bufs, p, 64, "small");
    // A chain where each buffer lives with its neighbours only: two columns suffice.
    bufs.clear();
    for (int32_t i = 0; i < 8; ++i) bufs.push_back(buf("chain", 640, {{i, i + 1}}));
    p = plan_activations(bufs);
    EXPECT_EQ(p.arena_bytes, 1280u);
    check_plan(bufs, p, 64, "chain");
    // A gap between two live buffers is filled when the buffer fits in it.
    bufs = {buf("low", 64, {{0, 9}}), buf("high", 64 * 4, {{0, 9}}), buf("gone", 64 * 2, {{0, 0}}), buf("fits", 64 * 2, {{5, 5}})};
    p = plan_activations(bufs);
    check_plan(bufs, p, 64, "gap");
    EXPECT_EQ(p.offsets[3], p.offsets[2]) << "reuses the bytes of the dead buffer";
    EXPECT_EQ(p.arena_bytes, 64u * 7);
    // Disjoint layout: one after the other.
    p = plan_disjoint(bufs);
    EXPECT_EQ(p.offsets, (std::vector<size_t>{0, 64, 320, 448}));
    EXPECT_EQ(p.arena_bytes, p.sum_bytes);
}

TEST(ActivationPlan, RandomLifetimesNeverShareLiveBytes) {
    std::mt19937 rng(20240607);
    for (int trial = 0; trial < 400; ++trial) {
        const size_t alignment = size_t(1) << (rng() % 8);  // 1 .. 128
        const int32_t n_points = 1 + int32_t(rng() % 40);
        std::vector<activation_buffer> bufs(1 + rng() % 48);
        for (size_t i = 0; i < bufs.size(); ++i) {
            activation_buffer& b = bufs[i];
            b.name = "b" + std::to_string(i);
            // Mostly small sizes, some large, a few empty; rarely a multiple of the alignment.
            const uint32_t kind = rng() % 10;
            b.bytes = kind == 0 ? 0 : kind < 7 ? 1 + rng() % 500 : 1 + rng() % 100000;
            const int n_ranges = int(rng() % 4);  // 0: never live
            for (int r = 0; r < n_ranges; ++r) {
                const int32_t first = int32_t(rng() % uint32_t(n_points));
                const int32_t last = first + int32_t(rng() % uint32_t(n_points - first));
                b.live.push_back({first, last});
            }
        }
        const std::string what = "trial " + std::to_string(trial);
        const activation_plan p = plan_activations(bufs, alignment);
        check_plan(bufs, p, alignment, what);
        EXPECT_GE(p.arena_bytes, live_peak(bufs, 1)) << what;
        const activation_plan d = plan_disjoint(bufs, alignment);
        check_plan(bufs, d, alignment, what + " disjoint");
        EXPECT_EQ(d.arena_bytes, d.sum_bytes) << what;
        for (size_t i = 0; i < bufs.size(); ++i)
            for (size_t j = i + 1; j < bufs.size(); ++j)
                EXPECT_FALSE(bytes_overlap(d.offsets[i], bufs[i].bytes, d.offsets[j], bufs[j].bytes)) << what;
        // Deterministic.
        EXPECT_EQ(plan_activations(bufs, alignment).offsets, p.offsets) << what;
    }
}

namespace {

model_hparams shape(int64_t n_embd, int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t n_ff, int64_t n_vocab) {
    model_hparams hp;
    hp.n_embd = n_embd;
    hp.n_head = n_head;
    hp.n_head_kv = n_head_kv;
    hp.head_dim = head_dim;
    hp.n_rot = head_dim;
    hp.n_ff = n_ff;
    hp.n_vocab = n_vocab;
    hp.n_layer = 22;
    return hp;
}

}  // namespace

// forward_state's buffers and live ranges planned for the shapes of TinyLlama-1.1B and
// stories260K: the arena is the heaviest set of buffers that conflict pairwise (the plan is
// optimal for these lifetimes), and the ratios to the sum are printed.
TEST(ActivationPlan, ForwardPassPlanOfModelShapes) {
    struct model_shape {
        const char* name;
        model_hparams hp;
    };
    const model_shape shapes[] = {{"TinyLlama-1.1B", shape(2048, 32, 4, 64, 5632, 32000)}, {"stories260K", shape(64, 8, 4, 8, 172, 512)}};
    for (const model_shape& s : shapes)
        for (int64_t tokens : {1, 7, 64, 512, 2048})
            for (int64_t logit_rows : {int64_t(1), tokens}) {
                const std::string what = strfmt("%s, %lld tokens, %lld logit rows", s.name, (long long)tokens, (long long)logit_rows);
                const auto bufs = llama_activation_buffers(s.hp, tokens, logit_rows);
                const activation_plan p = plan_activations(bufs);
                check_plan(bufs, p, activation_alignment, what);
                EXPECT_EQ(live_peak_bytes(bufs), live_peak(bufs, activation_alignment)) << what;
                EXPECT_EQ(p.arena_bytes, max_clique_bytes(bufs, activation_alignment)) << what;
                if (tokens == 512)
                    std::printf("%s\n", strfmt("  %s: planned %.3f MiB, sum of buffers %.3f MiB, ratio %.3f", what.c_str(),
                                               double(p.arena_bytes) / 1048576.0, double(p.sum_bytes) / 1048576.0,
                                               double(p.arena_bytes) / double(p.sum_bytes))
                                            .c_str());
            }
}

// The plan a forward_state holds (for the real model): the same rules, and the disjoint layout
// is the sum.
TEST(ActivationPlan, ForwardStateArenaFollowsItsPlan) {
    NEED_MODEL(f);
    for (int64_t tokens : {1, 3, 64, 512})
        for (int64_t logit_rows : {int64_t(1), tokens}) {
            const std::string what = strfmt("%lld tokens, %lld logit rows", (long long)tokens, (long long)logit_rows);
            forward_state st(*f->model, tokens, logit_rows);
            ASSERT_EQ(st.buffers().size(), st.arena_plan().offsets.size()) << what;
            check_plan(st.buffers(), st.arena_plan(), activation_alignment, what);
            EXPECT_EQ(st.planned_bytes(), st.arena_plan().arena_bytes);
            EXPECT_LT(st.planned_bytes(), st.unplanned_bytes()) << what;
            forward_state apart(*f->model, tokens, logit_rows, forward_state::layout::disjoint);
            EXPECT_EQ(apart.planned_bytes(), st.unplanned_bytes()) << what;
            EXPECT_EQ(apart.unplanned_bytes(), st.unplanned_bytes()) << what;
        }
}

namespace {

struct pass_output {
    std::vector<float> logits;
    std::map<std::string, std::vector<float>> tensors;  // "name/layer/pass" -> data
};

// Two sequences prefilled in one ragged batch (every row's logits), then two decode passes of
// one row each, through a forward_state of the given capacity and layout; with an f32 cache.
pass_output run_passes(const llama_model& m, const std::vector<int32_t>& a, const std::vector<int32_t>& b_toks, int64_t max_tokens,
                       int64_t max_logits, forward_state::layout layout) {
    thread_pool pool(2);
    auto kv = kv_cache::create(m.kv_geometry(4, 64, dtype::f32)).value();
    forward_state st(m, max_tokens, max_logits, layout);
    const int64_t nv = m.hparams().n_vocab;
    pass_output out;
    int pass = 0;
    tensor_hook hook = [&](const char* name, int64_t layer, const float* data, int64_t rows, int64_t cols) {
        // A tensor may come in consecutive row blocks (the FFN's output): append them.
        std::vector<float>& t = out.tensors[strfmt("%s/%lld/%d", name, (long long)layer, pass)];
        t.insert(t.end(), data, data + rows * cols);
    };
    const int32_t sa = kv->seq_add(), sb = kv->seq_add();
    EXPECT_TRUE(kv->seq_reserve(sa, int64_t(a.size()) + 2));
    EXPECT_TRUE(kv->seq_reserve(sb, int64_t(b_toks.size()) + 2));
    batch b;
    for (size_t t = 0; t < a.size(); ++t) b.add(a[t], int32_t(t), sa, true);
    for (size_t t = 0; t < b_toks.size(); ++t) b.add(b_toks[t], int32_t(t), sb, true);
    EXPECT_TRUE(m.forward(b, *kv, st, pool, hook));
    out.logits.assign(st.logits(), st.logits() + b.n_logits() * nv);
    for (int32_t step = 0; step < 2; ++step) {
        ++pass;
        b.clear();
        b.add(int32_t(5 + step), int32_t(a.size()) + step, sa, true);
        b.add(int32_t(9 + step), int32_t(b_toks.size()) + step, sb, step == 1);
        EXPECT_TRUE(m.forward(b, *kv, st, pool, hook));
        out.logits.insert(out.logits.end(), st.logits(), st.logits() + b.n_logits() * nv);
    }
    return out;
}

bool bitwise_equal(const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

}  // namespace

TEST(ActivationPlan, PlannedArenaGivesTheSameLogitsBitForBit) {
    NEED_MODEL(f);
    const llama_model& m = *f->model;
    std::vector<int32_t> a = f->tok->encode("Once upon a time there was a little girl named Lily", true, false);
    std::vector<int32_t> b = f->tok->encode("The cat sat on the mat", true, false);
    const int64_t n = int64_t(a.size() + b.size());
    const pass_output apart = run_passes(m, a, b, n, n, forward_state::layout::disjoint);
    ASSERT_FALSE(apart.logits.empty());
    // Capacities give different plans; every one gives the same bits.
    const std::pair<int64_t, int64_t> capacities[] = {{n, n}, {n + 1, n}, {64, 64}, {512, n}, {300, 512}};
    for (auto [tokens, logit_rows] : capacities) {
        const pass_output planned = run_passes(m, a, b, tokens, logit_rows, forward_state::layout::planned);
        EXPECT_TRUE(bitwise_equal(planned.logits, apart.logits)) << tokens << " tokens, " << logit_rows << " logit rows";
        ASSERT_EQ(planned.tensors.size(), apart.tensors.size());
        for (const auto& [key, data] : apart.tensors) {
            auto it = planned.tensors.find(key);
            ASSERT_NE(it, planned.tensors.end()) << key;
            EXPECT_TRUE(bitwise_equal(it->second, data)) << key << " with " << tokens << " tokens, " << logit_rows << " logit rows";
        }
    }
    // And they are the model's logits: the float64 reference of each sequence alone.
    const int64_t nv = m.hparams().n_vocab;
    const auto ref_a = test::reference_logits(m, a), ref_b = test::reference_logits(m, b);
    for (size_t t = 0; t < a.size(); ++t)
        EXPECT_LT(test::nmse_norm(apart.logits.data() + int64_t(t) * nv, ref_a[t].data(), nv), 1e-4) << "a " << t;
    for (size_t t = 0; t < b.size(); ++t)
        EXPECT_LT(test::nmse_norm(apart.logits.data() + int64_t(a.size() + t) * nv, ref_b[t].data(), nv), 1e-4) << "b " << t;
}

// The feed-forward block runs llama_ffn_row_block rows at a time with its intermediates sized
// for one block: a pass of 2.5 blocks' rows (two sequences, the split between blocks falling
// inside each) gives the float64 reference's logits for every row, and its ffn_out tensors
// come block by block, in order, covering every row once.
TEST(ActivationPlan, FeedForwardRowBlocksCoverEveryRow) {
    NEED_MODEL(f);
    const llama_model& m = *f->model;
    const int64_t nv = m.hparams().n_vocab, d = m.hparams().n_embd;
    const int64_t len_a = llama_ffn_row_block + 37, len_b = llama_ffn_row_block + 29, n = len_a + len_b;
    std::vector<int32_t> a(static_cast<size_t>(len_a)), b_toks(static_cast<size_t>(len_b));
    for (int64_t i = 0; i < len_a; ++i) a[size_t(i)] = int32_t(1 + (i * 37) % (nv - 1));
    for (int64_t i = 0; i < len_b; ++i) b_toks[size_t(i)] = int32_t(1 + (i * 53 + 11) % (nv - 1));
    forward_state st(m, n, n);
    // One block of rows for the FFN's scratch, whatever the capacity.
    for (const activation_buffer& buf : st.buffers()) {
        if (buf.name == "gate") {
            EXPECT_EQ(buf.bytes, size_t(llama_ffn_row_block * m.hparams().n_ff) * sizeof(float));
        }
    }
    thread_pool pool(2);
    auto kv = kv_cache::create(m.kv_geometry(16, 64, dtype::f32)).value();
    const int32_t sa = kv->seq_add(), sb = kv->seq_add();
    ASSERT_TRUE(kv->seq_reserve(sa, len_a));
    ASSERT_TRUE(kv->seq_reserve(sb, len_b));
    batch bt;
    for (int64_t t = 0; t < len_a; ++t) bt.add(a[size_t(t)], int32_t(t), sa, true);
    for (int64_t t = 0; t < len_b; ++t) bt.add(b_toks[size_t(t)], int32_t(t), sb, true);
    std::vector<int64_t> ffn_rows;  // rows of each ffn_out report of layer 0
    tensor_hook hook = [&](const char* name, int64_t layer, const float*, int64_t rows, int64_t cols) {
        if (std::string(name) == "ffn_out" && layer == 0) {
            EXPECT_EQ(cols, d);
            ffn_rows.push_back(rows);
        }
    };
    ASSERT_TRUE(m.forward(bt, *kv, st, pool, hook));
    const std::vector<int64_t> want = {llama_ffn_row_block, llama_ffn_row_block, n - 2 * llama_ffn_row_block};
    EXPECT_EQ(ffn_rows, want);
    const auto ref_a = test::reference_logits(m, a), ref_b = test::reference_logits(m, b_toks);
    for (int64_t t = 0; t < len_a; ++t)
        EXPECT_LT(test::nmse_norm(st.logits() + t * nv, ref_a[size_t(t)].data(), nv), 1e-4) << "a " << t;
    for (int64_t t = 0; t < len_b; ++t)
        EXPECT_LT(test::nmse_norm(st.logits() + (len_a + t) * nv, ref_b[size_t(t)].data(), nv), 1e-4) << "b " << t;
}
