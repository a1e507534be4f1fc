#include "kernels/cpu/attention_probs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace kvs::cpu {

namespace {

// One key row as float: f32 rows are read in place, 16-bit rows widened into tmp.
const float* key_row(const kv_page_layout& l, const uint8_t* block, int64_t row, float* tmp) {
    if (l.type == dtype::f32) return reinterpret_cast<const float*>(block) + row * l.head_dim;
    for (int64_t d = 0; d < l.head_dim; ++d) tmp[d] = kv_load_k(l, block, row, d);
    return tmp;
}

}  // namespace

void attention_probs_add(const paged_kv_view& kv, int64_t kv_head, const int32_t* pages, int64_t n_slots, const float* q,
                         int64_t group, float scale, float* acc, float* scratch) {
    if (n_slots <= 0) return;
    const kv_page_layout l = kv.layout();
    const int64_t hd = kv.head_dim, ps = kv.page_size;
    thread_local std::vector<float> tmp;
    tmp.resize(size_t(hd));
    // Logits, (group, n_slots).
    for (int64_t s = 0; s < n_slots; ++s) {
        const float* k = key_row(l, kv.k_block(pages[s / ps], kv_head), s % ps, tmp.data());
        for (int64_t g = 0; g < group; ++g) {
            const float* qg = q + g * hd;
            float dot = 0;
            for (int64_t d = 0; d < hd; ++d) dot += qg[d] * k[d];
            scratch[g * n_slots + s] = dot * scale;
        }
    }
    for (int64_t g = 0; g < group; ++g) {
        float* sc = scratch + g * n_slots;
        const float mx = *std::max_element(sc, sc + n_slots);
        double sum = 0;
        for (int64_t s = 0; s < n_slots; ++s) sum += (sc[s] = std::exp(sc[s] - mx));
        const float inv = float(1.0 / sum);
        for (int64_t s = 0; s < n_slots; ++s) acc[s] += sc[s] * inv;
    }
}

namespace ref {

void attention_probs_add(const paged_kv_view& kv, int64_t kv_head, const int32_t* pages, int64_t n_slots, const float* q,
                         int64_t group, float scale, double* acc) {
    const kv_page_layout l = kv.layout();
    const int64_t hd = kv.head_dim, ps = kv.page_size;
    std::vector<double> sc(size_t(std::max<int64_t>(n_slots, 0)));
    for (int64_t g = 0; g < group; ++g) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s < n_slots; ++s) {
            const uint8_t* kb = kv.k_block(pages[s / ps], kv_head);
            double dot = 0;
            for (int64_t d = 0; d < hd; ++d) dot += double(q[g * hd + d]) * double(kv_load_k(l, kb, s % ps, d));
            sc[size_t(s)] = dot * double(scale);
            mx = std::max(mx, sc[size_t(s)]);
        }
        double sum = 0;
        for (int64_t s = 0; s < n_slots; ++s) sum += (sc[size_t(s)] = std::exp(sc[size_t(s)] - mx));
        for (int64_t s = 0; s < n_slots; ++s) acc[s] += sc[size_t(s)] / sum;
    }
}

}  // namespace ref

}  // namespace kvs::cpu
