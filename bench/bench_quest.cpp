// Quest's attention against dense attention for one decode row, TinyLlama-1.1B geometry (32
// query heads, 4 KV heads, head size 64, bf16 pages of 16), at a context of n_kv tokens.
// "dense" is the paged attention kernel over the whole context; "quest" is what a Quest layer
// does: score every page from its key bounds, select the budget's pages per KV head
// (kv/quest.h) and attend to them through per-head page lists. Both cycle through `layers`
// separate caches, as the forward pass does, so the K/V stream from DRAM rather than the
// last-level cache. Args: n_kv, budget, threads, layers. Compare the two at the same args.
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kv/attention_plan.h"
#include "kv/kv_cache.h"
#include "kv/quest.h"

namespace {

struct setup {
    std::unique_ptr<kvs::kv_cache> kv;
    int32_t seq = -1;
    std::vector<float> q;
    int64_t n_kv = 0, layers = 0;
};

// One cache of `layers` layers holding one sequence of n_kv tokens with pseudo-random keys.
setup& get_setup(int64_t n_kv, int64_t budget, int64_t layers) {
    static std::unique_ptr<setup> s;
    if (s && s->n_kv == n_kv && s->layers == layers && s->kv->seq_policy(s->seq).budget == budget) return *s;
    s = std::make_unique<setup>();
    s->n_kv = n_kv;
    s->layers = layers;
    kvs::kv_config c;
    c.n_layer = layers;
    c.n_kv_head = 4;
    c.head_dim = 64;
    c.page_size = 16;
    c.n_pages = int32_t(n_kv / 16 + 2);
    c.type = kvs::dtype::bf16;
    c.key_bounds = true;
    s->kv = std::move(kvs::kv_cache::create(c).value());
    s->seq = s->kv->seq_add();
    s->kv->seq_set_policy(s->seq, kvs::kv_policy::parse("quest:budget=" + std::to_string(budget)).value());
    s->kv->seq_reserve(s->seq, n_kv);
    std::vector<float> k(256), v(256);
    uint64_t x = 88172645463325252ull;
    auto rnd = [&] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return float(int64_t(x >> 40) - (int64_t(1) << 23)) * 0x1p-23f;
    };
    for (int64_t l = 0; l < layers; ++l)
        for (int64_t t = 0; t < n_kv; ++t) {
            for (auto& e : k) e = rnd();
            for (auto& e : v) e = rnd();
            s->kv->write(l, s->seq, t, k.data(), v.data());
        }
    s->q.resize(32 * 64);
    for (auto& e : s->q) e = rnd();
    return *s;
}

enum class mode { dense, quest, select_only, contiguous_lists };

void run(benchmark::State& state, mode m) {
    const bool quest = m != mode::dense;
    const int64_t n_kv = state.range(0), budget = state.range(1), layers = state.range(3);
    setup& s = get_setup(n_kv, budget, layers);
    kvs::thread_pool pool(int(state.range(2)));
    const int32_t seq = s.seq, slot = int32_t(n_kv - 1);
    kvs::attention_plan ap;
    if (!kvs::plan_attention(1, &seq, &slot, *s.kv, ap)) state.SkipWithError("plan failed");
    if (quest && ap.quest_rows.empty()) state.SkipWithError("the budget covers the context");
    kvs::quest_layer_plan qp;
    std::vector<float> o(32 * 64), lse(32);
    kvs::cpu::attention_batch b;
    b.n_q = 1;
    b.n_head = 32;
    b.q = s.q.data();
    b.q_seq = ap.q_seq.data();
    b.q_kv_len = ap.q_kv_len.data();
    b.page_indptr = ap.page_indptr.data();
    b.page_ids = ap.page_ids.data();
    b.scale = 0.125f;
    int64_t l = 0;
    for (auto _ : state) {
        if (quest) {
            if (!kvs::quest_select(ap, *s.kv, l, s.q.data(), 32, qp, pool)) state.SkipWithError("select failed");
            if (m == mode::contiguous_lists)  // the same lists' lengths over the first pages, in order
                for (size_t e = ap.page_indptr.size() - 1; e + 1 < qp.page_indptr.size(); ++e)
                    for (int32_t i = qp.page_indptr[e]; i < qp.page_indptr[e + 1]; ++i) qp.page_ids[size_t(i)] = ap.page_ids[size_t(i - qp.page_indptr[e])];
            if (m == mode::select_only) {
                benchmark::ClobberMemory();
                l = (l + 1) % layers;
                continue;
            }
            kvs::cpu::attention_batch qb = b;
            qb.page_indptr = qp.page_indptr.data();
            qb.page_ids = qp.page_ids.data();
            qb.seq_head_entry = qp.seq_head_entry.data();
            qb.q_kv_len = qp.q_kv_len.data();
            kvs::cpu::attention_paged(qb, s.kv->view(l), o.data(), lse.data(), pool);
        } else {
            kvs::cpu::attention_paged(b, s.kv->view(l), o.data(), lse.data(), pool);
        }
        benchmark::ClobberMemory();
        l = (l + 1) % layers;
    }
    state.SetLabel(m == mode::dense ? "dense" : m == mode::quest ? "quest" : "quest: scoring and selection only");
}

void bm_dense(benchmark::State& state) { run(state, mode::dense); }
void bm_quest(benchmark::State& state) { run(state, mode::quest); }
void bm_quest_select(benchmark::State& state) { run(state, mode::select_only); }
void bm_quest_contig(benchmark::State& state) { run(state, mode::contiguous_lists); }

// Dense and Quest alternate at each size (the machine is shared: compare neighbours). The
// "select" rows time the scoring and selection alone; "contig" reads lists of the same length
// over the first pages in order, which separates the cost of scattered pages from the kernel's.
#define KVS_QUEST_BENCH(fn, n_kv) \
    BENCHMARK(fn)->ArgNames({"n_kv", "budget", "threads", "layers"})->Args({n_kv, 2048, 2, 22})->UseRealTime()->Unit(benchmark::kMicrosecond)
KVS_QUEST_BENCH(bm_dense, 16384);
KVS_QUEST_BENCH(bm_quest, 16384);
KVS_QUEST_BENCH(bm_quest_select, 16384);
KVS_QUEST_BENCH(bm_quest_contig, 16384);
KVS_QUEST_BENCH(bm_dense, 32768);
KVS_QUEST_BENCH(bm_quest, 32768);
KVS_QUEST_BENCH(bm_quest_select, 32768);
KVS_QUEST_BENCH(bm_quest_contig, 32768);

}  // namespace

BENCHMARK_MAIN();
