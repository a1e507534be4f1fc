#include "kv/h2o.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/attention_probs.h"

namespace kvs {

status h2o_accumulate(const attention_plan& ap, kv_cache& kv, int64_t layer, const float* q, int64_t n_head, float scale,
                      thread_pool& pool) {
    const kv_config& c = kv.config();
    if (!c.token_scores) return status::error("h2o: the KV cache keeps no token scores (kv_config::token_scores)");
    const int64_t n_kv = c.n_kv_head, hd = c.head_dim, group = n_head / n_kv, ps = c.page_size;
    const int64_t n_e = int64_t(ap.h2o_entries.size());
    if (n_e == 0) return status::ok();
    const cpu::paged_kv_view view = kv.view(layer);
    pool.run(n_e * n_kv, [&](int64_t task, int) {
        const int64_t e = task / n_kv, h = task % n_kv;
        const int32_t entry = ap.h2o_entries[size_t(e)];
        const int32_t* pages = ap.page_ids.data() + ap.page_indptr[size_t(entry)];
        int64_t n_slots = 0;
        for (int32_t i = ap.h2o_row_indptr[size_t(e)]; i < ap.h2o_row_indptr[size_t(e + 1)]; ++i)
            n_slots = std::max<int64_t>(n_slots, ap.q_kv_len[size_t(ap.h2o_rows[size_t(i)])]);
        thread_local std::vector<float> acc, scratch;
        acc.assign(size_t(n_slots), 0.0f);
        scratch.resize(size_t(group * n_slots));
        for (int32_t i = ap.h2o_row_indptr[size_t(e)]; i < ap.h2o_row_indptr[size_t(e + 1)]; ++i) {
            const int32_t r = ap.h2o_rows[size_t(i)];
            cpu::attention_probs_add(view, h, pages, ap.q_kv_len[size_t(r)], q + (int64_t(r) * n_head + h * group) * hd, group, scale,
                                     acc.data(), scratch.data());
        }
        for (int64_t s = 0; s < n_slots; ++s) kv.token_scores(layer, pages[s / ps], h)[s % ps] += acc[size_t(s)];
    });
    return status::ok();
}

status h2o_cut_back(kv_cache& kv, int32_t seq, int64_t n_filled) {
    const kv_policy& p = kv.seq_policy(seq);
    if (p.kind != kv_policy_kind::h2o) return status::error("h2o: the sequence's policy is not h2o");
    const kv_config& c = kv.config();
    if (!c.token_scores) return status::error("h2o: the KV cache keeps no token scores (kv_config::token_scores)");
    const int64_t keep = h2o_kept_slots(p, n_filled), ps = c.page_size;
    if (n_filled > keep) {
        if (!kv.seq_prepare_write(seq, 0, keep)) return status::error("kv cache: no free page for copy-on-write");
        const std::vector<int32_t>& pages = kv.seq_pages(seq);
        const size_t nf = static_cast<size_t>(n_filled);
        std::vector<int32_t> pos(nf), order(nf);
        std::vector<float> score(nf);
        std::vector<uint8_t> kept(nf);
        for (int64_t l = 0; l < c.n_layer; ++l)
            for (int64_t h = 0; h < c.n_kv_head; ++h) {
                for (int64_t s = 0; s < n_filled; ++s) {
                    const int32_t pg = pages[size_t(s / ps)];
                    pos[size_t(s)] = kv.token_positions(l, pg, h)[s % ps];
                    score[size_t(s)] = kv.token_scores(l, pg, h)[s % ps];
                }
                std::iota(order.begin(), order.end(), 0);
                // The R most recent first, then the others by score (equal: the earlier position).
                std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return pos[size_t(a)] > pos[size_t(b)]; });
                std::sort(order.begin() + std::min<int64_t>(p.recent, n_filled), order.end(), [&](int32_t a, int32_t b) {
                    return score[size_t(a)] > score[size_t(b)] || (score[size_t(a)] == score[size_t(b)] && pos[size_t(a)] < pos[size_t(b)]);
                });
                std::fill(kept.begin(), kept.end(), 0);
                for (int64_t i = 0; i < keep; ++i) kept[size_t(order[size_t(i)])] = 1;
                // Kept tokens past the region fill the evicted slots inside it, in slot order.
                int64_t hole = 0;
                for (int64_t s = keep; s < n_filled; ++s) {
                    if (!kept[size_t(s)]) continue;
                    while (kept[size_t(hole)]) ++hole;
                    kv.move_row(l, h, pages[size_t(hole / ps)], hole % ps, pages[size_t(s / ps)], s % ps);
                    kept[size_t(hole)] = 1;
                }
            }
    }
    kv.seq_truncate(seq, keep);
    return status::ok();
}

std::vector<int32_t> h2o_held_positions(const kv_cache& kv, int32_t seq, int64_t layer, int64_t head, int64_t n_slots) {
    const int64_t ps = kv.config().page_size;
    const std::vector<int32_t>& pages = kv.seq_pages(seq);
    std::vector<int32_t> out;
    if (!kv.config().token_scores) return out;
    for (int64_t s = 0; s < n_slots && s / ps < int64_t(pages.size()); ++s)
        out.push_back(kv.token_positions(layer, pages[size_t(s / ps)], head)[s % ps]);
    std::sort(out.begin(), out.end());
    return out;
}

void h2o_mass_probe::record(const attention_plan& ap, const int32_t* seq_ids, const int32_t* positions, int64_t layer, const float* k,
                            int64_t kv_width) {
    for (int32_t r : ap.h2o_rows) {
        auto& layers = keys_[seq_ids[r]];
        if (int64_t(layers.size()) <= layer) layers.resize(size_t(layer + 1));
        std::vector<float>& ks = layers[size_t(layer)];
        const size_t need = size_t(positions[r] + 1) * size_t(kv_width);
        if (ks.size() < need) ks.resize(need, 0.0f);
        std::copy_n(k + int64_t(r) * kv_width, kv_width, ks.begin() + long(size_t(positions[r]) * size_t(kv_width)));
    }
}

void h2o_mass_probe::measure(const attention_plan& ap, const kv_cache& kv, const int32_t* seq_ids, const int32_t* positions,
                             int64_t layer, const float* q, int64_t n_head, float scale) {
    const kv_config& c = kv.config();
    const int64_t n_kv = c.n_kv_head, hd = c.head_dim, group = n_head / n_kv, ps = c.page_size, width = n_kv * hd;
    if (int64_t(sum_.size()) <= layer) sum_.resize(size_t(layer + 1), 0.0), count_.resize(size_t(layer + 1), 0);
    std::vector<double> sc;
    for (int32_t r : ap.h2o_rows) {
        const std::vector<float>& ks = keys_[seq_ids[r]][size_t(layer)];
        const int64_t n_pos = positions[r] + 1;  // every token up to the row's own
        const int32_t* pages = ap.page_ids.data() + ap.page_indptr[size_t(ap.q_seq[size_t(r)])];
        const int64_t n_slots = ap.q_kv_len[size_t(r)];
        sc.resize(size_t(n_pos));
        for (int64_t h = 0; h < n_head; ++h) {
            const int64_t kh = h / group;
            const float* qh = q + (int64_t(r) * n_head + h) * hd;
            double mx = -1e300;
            for (int64_t j = 0; j < n_pos; ++j) {
                double dot = 0;
                for (int64_t d = 0; d < hd; ++d) dot += double(qh[d]) * double(ks[size_t(j * width + kh * hd + d)]);
                sc[size_t(j)] = dot * double(scale);
                mx = std::max(mx, sc[size_t(j)]);
            }
            double all = 0;
            for (int64_t j = 0; j < n_pos; ++j) all += std::exp(sc[size_t(j)] - mx);
            double kept = 0;
            for (int64_t s = 0; s < n_slots; ++s) {
                const int32_t pj = kv.token_positions(layer, pages[s / ps], kh)[s % ps];
                kept += std::exp(sc[size_t(pj)] - mx);
            }
            sum_[size_t(layer)] += kept / all;
            ++count_[size_t(layer)];
        }
    }
}

}  // namespace kvs
