#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"

namespace kvs::cpu {

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// One (query row, KV head) task: the n_group query heads sharing this KV head read each
// page once. Online softmax (FlashAttention): running max m, denominator l and the
// unnormalized output acc per head; scores are never stored beyond one page.
void attend_row_kv_head(const attention_batch& b, const paged_kv_view& kv, int64_t row, int64_t kvh,
                        float* o, float* lse, std::vector<float>& scratch) {
    const int64_t hd = kv.head_dim, ps = kv.page_size;
    const int64_t n_group = b.n_head / kv.n_kv_head;
    const int64_t h0 = kvh * n_group;
    const int64_t n_kv = b.q_kv_len[row];
    const int32_t* pages = b.page_ids + b.page_indptr[b.q_seq[row]];
    const size_t page_elems = size_t(kv.n_kv_head * ps * hd);

    scratch.resize(size_t(n_group * (hd + 2 + ps)));
    float* acc = scratch.data();           // (n_group, hd)
    float* m = acc + n_group * hd;         // (n_group)
    float* l = m + n_group;                // (n_group)
    float* s = l + n_group;                // (ps) scores of one head for one page
    std::fill(acc, acc + n_group * hd, 0.0f);
    std::fill(m, m + n_group, neg_inf);
    std::fill(l, l + n_group, 0.0f);

    for (int64_t start = 0; start < n_kv; start += ps) {
        const int64_t n_t = std::min(ps, n_kv - start);
        const size_t base = size_t(pages[start / ps]) * page_elems + size_t(kvh * ps * hd);
        const float* kp = kv.k + base;  // (ps, hd)
        const float* vp = kv.v + base;  // (ps, hd)
        for (int64_t g = 0; g < n_group; ++g) {
            const float* q = b.q + (row * b.n_head + h0 + g) * hd;
            float mx = m[g];
            for (int64_t t = 0; t < n_t; ++t) {
                s[t] = dot_f32(q, kp + t * hd, hd) * b.scale;
                mx = std::max(mx, s[t]);
            }
            const float corr = std::exp(m[g] - mx);  // 0 when m was -inf
            float* a = acc + g * hd;
            float sum = 0.0f;
            for (int64_t d = 0; d < hd; ++d) a[d] *= corr;
            for (int64_t t = 0; t < n_t; ++t) {
                const float p = std::exp(s[t] - mx);
                sum += p;
                const float* v = vp + t * hd;
                for (int64_t d = 0; d < hd; ++d) a[d] += p * v[d];
            }
            l[g] = l[g] * corr + sum;
            m[g] = mx;
        }
    }
    for (int64_t g = 0; g < n_group; ++g) {
        float* out = o + (row * b.n_head + h0 + g) * hd;
        if (l[g] == 0.0f) {
            std::fill(out, out + hd, 0.0f);
            lse[row * b.n_head + h0 + g] = neg_inf;
            continue;
        }
        const float inv = 1.0f / l[g];
        for (int64_t d = 0; d < hd; ++d) out[d] = acc[g * hd + d] * inv;
        lse[row * b.n_head + h0 + g] = m[g] + std::log(l[g]);
    }
}

}  // namespace

void attention_paged(const attention_batch& b, const paged_kv_view& kv, float* o, float* lse, thread_pool& pool) {
    const int64_t n_tasks = b.n_q * kv.n_kv_head;
    pool.run(n_tasks, [&](int64_t task, int) {
        thread_local std::vector<float> scratch;
        attend_row_kv_head(b, kv, task / kv.n_kv_head, task % kv.n_kv_head, o, lse, scratch);
    });
}

void attention_merge(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int64_t n, int64_t head_dim) {
    for (int64_t i = 0; i < n; ++i) {
        const float la = lse_a[i], lb = lse_b[i];
        if (lb == neg_inf) continue;
        if (la == neg_inf) {
            std::copy(o_b + i * head_dim, o_b + (i + 1) * head_dim, o_a + i * head_dim);
            lse_a[i] = lb;
            continue;
        }
        const float mx = std::max(la, lb);
        const float wa = std::exp(la - mx), wb = std::exp(lb - mx);
        const float inv = 1.0f / (wa + wb);
        for (int64_t d = 0; d < head_dim; ++d)
            o_a[i * head_dim + d] = (o_a[i * head_dim + d] * wa + o_b[i * head_dim + d] * wb) * inv;
        lse_a[i] = mx + std::log(wa + wb);
    }
}

namespace ref {

void attention_paged(const attention_batch& b, const paged_kv_view& kv, float* o, float* lse) {
    const int64_t hd = kv.head_dim, ps = kv.page_size;
    const int64_t n_group = b.n_head / kv.n_kv_head;
    const size_t page_elems = size_t(kv.n_kv_head * ps * hd);
    for (int64_t row = 0; row < b.n_q; ++row) {
        const int64_t n_kv = b.q_kv_len[row];
        const int32_t* pages = b.page_ids + b.page_indptr[b.q_seq[row]];
        for (int64_t h = 0; h < b.n_head; ++h) {
            const int64_t kvh = h / n_group;
            const float* q = b.q + (row * b.n_head + h) * hd;
            std::vector<double> sc(static_cast<size_t>(n_kv), 0.0);
            double mx = -std::numeric_limits<double>::infinity();
            for (int64_t t = 0; t < n_kv; ++t) {
                const float* k = kv.k + size_t(pages[t / ps]) * page_elems + size_t((kvh * ps + t % ps) * hd);
                double acc = 0;
                for (int64_t d = 0; d < hd; ++d) acc += double(q[d]) * double(k[d]);
                sc[size_t(t)] = acc * double(b.scale);
                mx = std::max(mx, sc[size_t(t)]);
            }
            double sum = 0;
            for (auto& x : sc) sum += (x = std::exp(x - mx));
            float* out = o + (row * b.n_head + h) * hd;
            for (int64_t d = 0; d < hd; ++d) {
                double acc = 0;
                for (int64_t t = 0; t < n_kv; ++t) {
                    const float* v = kv.v + size_t(pages[t / ps]) * page_elems + size_t((kvh * ps + t % ps) * hd);
                    acc += sc[size_t(t)] * double(v[d]);
                }
                out[d] = n_kv ? float(acc / sum) : 0.0f;
            }
            lse[row * b.n_head + h] = n_kv ? float(mx + std::log(sum)) : neg_inf;
        }
    }
}

}  // namespace ref

}  // namespace kvs::cpu
