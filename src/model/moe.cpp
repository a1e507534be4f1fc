// The DeepSeek-V2 mixture-of-experts FFN (moe.h): routing, grouping by expert, the grouped
// expert matmuls, and the fixed-order sum per token.
#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/dtype.h"

namespace kvs {

cpu::weight_view moe_expert(const cpu::weight_view& stacked, int64_t e) {
    cpu::weight_view v = stacked;
    if (stacked.layout == cpu::weight_layout::interleaved16 && stacked.n_out % 16 != 0) {
        v.data = nullptr;
        return v;
    }
    const size_t matrix_bytes = size_t(stacked.n_out) * dtype_row_bytes(stacked.type, stacked.n_in);
    v.data = static_cast<const uint8_t*>(stacked.data) + size_t(e) * matrix_bytes;
    return v;
}

namespace {

// "" when v is a (n_out, n_in) matrix that matmul can multiply by, else why not.
std::string check_matrix(const cpu::weight_view& v, const char* name, int64_t n_out, int64_t n_in) {
    std::string why;
    if (!v.data) {
        why = "is missing";
    } else if (v.n_out != n_out || v.n_in != n_in) {
        why = "is (" + std::to_string(v.n_out) + ", " + std::to_string(v.n_in) + "), expected (" + std::to_string(n_out) +
              ", " + std::to_string(n_in) + ")";
    } else if (!cpu::matmul_supported(v.type)) {
        why = std::string("has dtype ") + dtype_name(v.type) + ", which matmul does not support";
    } else if (v.n_in % dtype_info(v.type).block_size != 0) {
        why = "has rows of " + std::to_string(v.n_in) + " elements, not a multiple of " + dtype_name(v.type) +
              "'s block size";
    } else if (v.layout == cpu::weight_layout::interleaved16 && v.n_out % 16 != 0) {
        why = "is interleaved16 with a row count not a multiple of 16";
    }
    return why.empty() ? why : std::string(name) + " " + why;
}

// Whether logit a ranks before logit b of a higher expert index: strictly larger, NaN lowest.
inline bool ranks_before(float a, float b) {
    if (std::isnan(a)) return false;
    if (std::isnan(b)) return true;
    return a > b;
}

void grow(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}
void grow(std::vector<int32_t>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

// What the per-token sum reads; passed to the pool by one pointer (no std::function allocation).
struct combine_job {
    const float* y;           // (n · k, n_embd) expert outputs at grouped positions
    const int32_t* pos_of;    // (n, k)
    const float* weights;     // (n, k)
    float* out;               // (n, n_embd): holds the shared FFN's output (or zeros) on entry
    int64_t n, k, n_embd, rows_per_task;
};

void combine_rows(const combine_job& j, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
        float* o = j.out + t * j.n_embd;
        for (int64_t r = 0; r < j.k; ++r) {
            const float wt = j.weights[t * j.k + r];
            const float* yr = j.y + int64_t(j.pos_of[t * j.k + r]) * j.n_embd;
            for (int64_t i = 0; i < j.n_embd; ++i) o[i] += wt * yr[i];
        }
    }
}

}  // namespace

std::string moe_check(const moe_weights& w) {
    if (w.n_expert < 1) return "n_expert must be at least 1";
    if (w.n_used < 1 || w.n_used > w.n_expert) {
        return "n_used (" + std::to_string(w.n_used) + ") must lie in [1, n_expert = " + std::to_string(w.n_expert) + "]";
    }
    const int64_t n_embd = w.n_embd(), n_ff = w.n_ff_exp();
    if (n_embd < 1 || n_ff < 1) return "expert matrices are empty";
    std::string why = check_matrix(w.router, "router", w.n_expert, n_embd);
    if (why.empty()) why = check_matrix(w.gate_exps, "gate_exps", n_ff, n_embd);
    if (why.empty()) why = check_matrix(w.up_exps, "up_exps", n_ff, n_embd);
    if (why.empty()) why = check_matrix(w.down_exps, "down_exps", n_embd, n_ff);
    if (!why.empty()) return why;
    const bool any_shared = w.gate_sh.data || w.up_sh.data || w.down_sh.data;
    if (any_shared) {
        const int64_t n_ff_sh = w.gate_sh.n_out;
        if (n_ff_sh < 1) return "gate_sh is empty";
        why = check_matrix(w.gate_sh, "gate_sh", n_ff_sh, n_embd);
        if (why.empty()) why = check_matrix(w.up_sh, "up_sh", n_ff_sh, n_embd);
        if (why.empty()) why = check_matrix(w.down_sh, "down_sh", n_embd, n_ff_sh);
    }
    return why;
}

void moe_route(const float* router_logits, int64_t n, int64_t n_expert, int64_t k, bool norm_topk, float scale,
               int32_t* ids, float* weights) {
    for (int64_t t = 0; t < n; ++t) {
        const float* r = router_logits + t * n_expert;
        int32_t* id = ids + t * k;
        // Top k by logit (the softmax is monotonic), by insertion: experts come in index
        // order, so an expert only passes those it strictly beats and ties keep the lower index.
        int64_t filled = 0;
        for (int64_t e = 0; e < n_expert; ++e) {
            int64_t pos = filled;
            while (pos > 0 && ranks_before(r[e], r[id[pos - 1]])) --pos;
            if (pos >= k) continue;
            for (int64_t j = std::min(filled, k - 1); j > pos; --j) id[j] = id[j - 1];
            id[pos] = int32_t(e);
            if (filled < k) ++filled;
        }
        // Softmax over every expert, in float64.
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t e = 0; e < n_expert; ++e) {
            if (double(r[e]) > mx) mx = r[e];
        }
        double sum = 0;
        for (int64_t e = 0; e < n_expert; ++e) sum += std::exp(double(r[e]) - mx);
        double chosen_sum = 0;
        for (int64_t j = 0; j < k; ++j) chosen_sum += std::exp(double(r[id[j]]) - mx) / sum;
        const double div = norm_topk ? chosen_sum : 1.0;
        for (int64_t j = 0; j < k; ++j) {
            const double pj = std::exp(double(r[id[j]]) - mx) / sum;
            weights[t * k + j] = float(pj / div * double(scale));
        }
    }
}

void moe_scratch::reserve(const moe_weights& w, int64_t rows) {
    const size_t n = size_t(std::max<int64_t>(rows, 1));
    const size_t k = size_t(w.n_used), ne = size_t(w.n_expert), n_embd = size_t(w.n_embd());
    const size_t n_ff = size_t(std::max(w.n_ff_exp(), w.has_shared() ? w.gate_sh.n_out : 0));
    grow(ids, n * k);
    grow(weights, n * k);
    grow(logits, n * ne);
    grow(expert_begin, ne + 1);
    grow(pos_of, n * k);
    grow(token_of, n * k);
    grow(fill, ne);
    grow(x, n * n_embd);
    grow(act, n * n_ff);
    grow(y, n * k * n_embd);
    max_tokens = std::max<int64_t>(max_tokens, rows);
}

void moe_ffn(const moe_weights& w, const float* h, int64_t n, float* out, moe_scratch& s, thread_pool& pool) {
    if (n <= 0) return;
    const int64_t n_embd = w.n_embd();
    if (!moe_check(w).empty()) {
        std::fill(out, out + n * n_embd, std::numeric_limits<float>::quiet_NaN());
        return;
    }
    s.reserve(w, n);
    const int64_t k = w.n_used, ne = w.n_expert;

    // Routing.
    cpu::matmul(w.router, h, n, s.logits.data(), pool);
    moe_route(s.logits.data(), n, ne, k, w.norm_topk, w.scale, s.ids.data(), s.weights.data());

    // Grouping: a counting sort of the (token, rank) pairs by expert, tokens ascending.
    int32_t* begin = s.expert_begin.data();
    std::fill(begin, begin + ne + 1, 0);
    for (int64_t i = 0; i < n * k; ++i) ++begin[s.ids[size_t(i)] + 1];
    for (int64_t e = 0; e < ne; ++e) begin[e + 1] += begin[e];
    std::copy(begin, begin + ne, s.fill.begin());
    for (int64_t t = 0; t < n; ++t) {
        for (int64_t r = 0; r < k; ++r) {
            const int32_t p = s.fill[size_t(s.ids[size_t(t * k + r)])]++;
            s.pos_of[size_t(t * k + r)] = p;
            s.token_of[size_t(p)] = int32_t(t);
        }
    }

    // The shared experts first: out starts as their output (or zeros).
    if (w.has_shared()) {
        cpu::matmul_swiglu(w.gate_sh, w.up_sh, h, n, s.act.data(), nullptr, s.act.data(), pool);
        cpu::matmul(w.down_sh, s.act.data(), n, out, pool);
    } else {
        std::fill(out, out + n * n_embd, 0.0f);
    }

    // Each active expert over its gathered rows, once: y at its grouped positions.
    int64_t read = 0;
    for (int64_t e = 0; e < ne; ++e) {
        const int64_t b = begin[e], m = begin[e + 1] - b;
        if (m == 0) continue;
        ++read;
        const int32_t t0 = s.token_of[size_t(b)];
        const float* x = h + int64_t(t0) * n_embd;  // consecutive tokens (always so for one row): no gather
        if (s.token_of[size_t(b + m - 1)] != t0 + m - 1) {
            for (int64_t j = 0; j < m; ++j) {
                std::memcpy(s.x.data() + j * n_embd, h + int64_t(s.token_of[size_t(b + j)]) * n_embd,
                            size_t(n_embd) * sizeof(float));
            }
            x = s.x.data();
        }
        cpu::matmul_swiglu(moe_expert(w.gate_exps, e), moe_expert(w.up_exps, e), x, m, s.act.data(), nullptr,
                           s.act.data(), pool);
        cpu::matmul(moe_expert(w.down_exps, e), s.act.data(), m, s.y.data() + b * n_embd, pool);
    }
    s.last_experts_read = read;
    s.experts_read += read;
    ++s.calls;

    // out_t += Σ_r w_t,r · y(t, r), rank order: each token by one task, whatever the pool.
    combine_job job{s.y.data(), s.pos_of.data(), s.weights.data(), out, n, k, n_embd, 1};
    if (n * k * n_embd < (int64_t(1) << 15) || pool.n_threads() == 1) {
        combine_rows(job, 0, n);
    } else {
        const int64_t n_tasks = std::min<int64_t>(n, int64_t(pool.n_threads()) * 4);
        job.rows_per_task = (n + n_tasks - 1) / n_tasks;
        const combine_job* jp = &job;
        pool.run(n_tasks, [jp](int64_t task, int) {
            const int64_t t0 = task * jp->rows_per_task;
            combine_rows(*jp, t0, std::min(jp->n, t0 + jp->rows_per_task));
        });
    }
}

}  // namespace kvs
