#include "kv/quest.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/quest.h"

namespace kvs {

status quest_select(const attention_plan& ap, const kv_cache& kv, int64_t layer, const float* q, int64_t n_head,
                    quest_layer_plan& out, thread_pool& pool) {
    const kv_config& c = kv.config();
    if (!c.key_bounds) return status::error("quest: the KV cache keeps no key bounds (kv_config::key_bounds)");
    const int64_t n_kv = c.n_kv_head, hd = c.head_dim, group = n_head / n_kv, ps = c.page_size;
    const int64_t n_seq = int64_t(ap.page_indptr.size()) - 1, n_quest = int64_t(ap.quest_rows.size());
    out.page_indptr = ap.page_indptr;
    out.page_ids = ap.page_ids;
    out.q_kv_len = ap.q_kv_len;
    out.seq_head_entry.resize(size_t(n_seq * n_kv));
    for (int64_t e = 0; e < n_seq; ++e)
        for (int64_t h = 0; h < n_kv; ++h) out.seq_head_entry[size_t(e * n_kv + h)] = int32_t(e);
    // One new entry per (Quest row, head), of quest_pages[j] pages each, appended in order.
    std::vector<int64_t> first_id(static_cast<size_t>(n_quest));
    int64_t max_pages = 0;
    for (int64_t j = 0; j < n_quest; ++j) {
        first_id[size_t(j)] = int64_t(out.page_ids.size());
        const int64_t k = ap.quest_pages[size_t(j)];
        out.page_ids.resize(out.page_ids.size() + size_t(k * n_kv));
        for (int64_t h = 0; h < n_kv; ++h) {
            out.seq_head_entry[size_t(ap.q_seq[size_t(ap.quest_rows[size_t(j)])] * n_kv + h)] = int32_t(out.page_indptr.size() - 1);
            out.page_indptr.push_back(int32_t(first_id[size_t(j)] + (h + 1) * k));
        }
        const int32_t r = ap.quest_rows[size_t(j)];
        max_pages = std::max<int64_t>(max_pages, kv_cache::pages_for(ap.q_kv_len[size_t(r)], int32_t(ps)));
    }
    out.scores.resize(size_t(n_quest * n_kv * std::max<int64_t>(max_pages, 1)));
    out.table_index.resize(out.page_ids.size() - ap.page_ids.size());
    out.order.resize(out.scores.size());
    pool.run(n_quest * n_kv, [&](int64_t task, int) {
        const int64_t j = task / n_kv, h = task % n_kv;
        const int32_t r = ap.quest_rows[size_t(j)];
        const int32_t* pages = ap.page_ids.data() + ap.page_indptr[size_t(ap.q_seq[size_t(r)])];
        const int64_t n_pages = kv_cache::pages_for(ap.q_kv_len[size_t(r)], int32_t(ps));
        const int64_t k = ap.quest_pages[size_t(j)];
        float* sc = out.scores.data() + size_t(task * max_pages);
        int32_t* idx = out.order.data() + size_t(task * max_pages);
        // The candidates: every page but the newest (always read).
        cpu::quest_page_scores(q + (int64_t(r) * n_head + h * group) * hd, group, hd, kv.key_bounds(layer, 0, h), kv.bounds_page_stride(),
                               pages, n_pages - 1, sc);
        std::iota(idx, idx + n_pages - 1, 0);
        auto better = [&](int32_t a, int32_t b) { return sc[a] > sc[b] || (sc[a] == sc[b] && a < b); };
        std::nth_element(idx, idx + (k - 1), idx + n_pages - 1, better);
        std::sort(idx, idx + (k - 1));
        int32_t* dst = out.page_ids.data() + first_id[size_t(j)] + h * k;
        int32_t* tix = out.table_index.data() + (first_id[size_t(j)] - int64_t(ap.page_ids.size())) + h * k;
        for (int64_t i = 0; i < k - 1; ++i) dst[i] = pages[idx[i]], tix[i] = idx[i];
        dst[k - 1] = pages[n_pages - 1];
        tix[k - 1] = int32_t(n_pages - 1);
    });
    out.pages_read = out.pages_dense = 0;
    for (int64_t j = 0; j < n_quest; ++j) {
        const int32_t r = ap.quest_rows[size_t(j)];
        const int64_t k = ap.quest_pages[size_t(j)], L = ap.q_kv_len[size_t(r)] - 1;
        out.q_kv_len[size_t(r)] = int32_t((k - 1) * ps + L % ps + 1);
        out.pages_read += k * n_kv;
        out.pages_dense += kv_cache::pages_for(L + 1, int32_t(ps)) * n_kv;
    }
    return status::ok();
}

// The share of each Quest row's dense attention mass (softmax over all its slots, per query
// head) that its selected pages carry (contract in quest.h).
void quest_attention_mass(const attention_plan& ap, const quest_layer_plan& qp, const kv_cache& kv, int64_t layer, const float* q,
                          int64_t n_head, float scale, std::vector<double>& sum, std::vector<int64_t>& count) {
    const kv_config& c = kv.config();
    const int64_t n_kv = c.n_kv_head, hd = c.head_dim, group = n_head / n_kv, ps = c.page_size;
    const cpu::paged_kv_view view = kv.view(layer);
    if (sum.size() <= size_t(layer)) sum.resize(size_t(layer) + 1, 0.0), count.resize(size_t(layer) + 1, 0);
    size_t off = 0;
    std::vector<double> logit;
    std::vector<char> chosen;
    for (size_t j = 0; j < ap.quest_rows.size(); ++j) {
        const int32_t r = ap.quest_rows[j];
        const int64_t k = ap.quest_pages[j], n_slots = ap.q_kv_len[size_t(r)];
        const int32_t* pages = ap.page_ids.data() + ap.page_indptr[size_t(ap.q_seq[size_t(r)])];
        for (int64_t h = 0; h < n_kv; ++h, off += size_t(k)) {
            chosen.assign(size_t(kv_cache::pages_for(n_slots, int32_t(ps))), 0);
            for (int64_t i = 0; i < k; ++i) chosen[size_t(qp.table_index[off + size_t(i)])] = 1;
            for (int64_t g = 0; g < group; ++g) {
                const float* qh = q + (int64_t(r) * n_head + h * group + g) * hd;
                logit.resize(size_t(n_slots));
                double mx = -1e300;
                for (int64_t t = 0; t < n_slots; ++t) {
                    const uint8_t* block = view.k_block(pages[t / ps], h);
                    double dot = 0;
                    for (int64_t d = 0; d < hd; ++d) dot += double(qh[d]) * cpu::kv_load_k(view.layout(), block, t % ps, d);
                    logit[size_t(t)] = dot * double(scale);
                    mx = std::max(mx, logit[size_t(t)]);
                }
                double all = 0, kept = 0;
                for (int64_t t = 0; t < n_slots; ++t) {
                    const double e = std::exp(logit[size_t(t)] - mx);
                    all += e;
                    if (chosen[size_t(t / ps)]) kept += e;
                }
                sum[size_t(layer)] += kept / all;
                count[size_t(layer)] += 1;
            }
        }
    }
}

}  // namespace kvs
