#include "kernels/cpu/quest.h"

#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvs::cpu {

namespace detail {
void quest_page_scores_avx512(const float* q, int64_t n_group, int64_t hd, const uint16_t* bounds, size_t page_stride,
                              const int32_t* page_ids, int64_t n_pages, float* out);
}  // namespace detail

namespace {

void quest_page_scores_portable(const float* q, int64_t n_group, int64_t hd, const uint16_t* bounds, size_t page_stride,
                       const int32_t* page_ids, int64_t n_pages, float* out) {
    constexpr int64_t max_hd = 1024;
    constexpr int64_t lanes = 16;  // independent partial sums: the compiler keeps them in one vector register
    float qpos[max_hd], qneg[max_hd];
    for (int64_t i = 0; i < n_pages; ++i) out[i] = -std::numeric_limits<float>::infinity();
    for (int64_t g = 0; g < n_group; ++g) {
        const float* qg = q + g * hd;
        for (int64_t d = 0; d < hd; ++d) {
            qpos[d] = std::max(qg[d], 0.0f);
            qneg[d] = std::min(qg[d], 0.0f);
        }
        const int64_t hd_main = hd / lanes * lanes;
        for (int64_t i = 0; i < n_pages; ++i) {
            const uint16_t* mn = bounds + size_t(page_ids[i]) * page_stride;
            const uint16_t* mx = mn + hd;
            float acc[lanes] = {};
            for (int64_t d = 0; d < hd_main; d += lanes)
                for (int64_t j = 0; j < lanes; ++j) acc[j] += qpos[d + j] * bf16_to_f32(mx[d + j]) + qneg[d + j] * bf16_to_f32(mn[d + j]);
            float s = 0;
            for (int64_t d = hd_main; d < hd; ++d) s += qpos[d] * bf16_to_f32(mx[d]) + qneg[d] * bf16_to_f32(mn[d]);
            for (int64_t j = 0; j < lanes; ++j) s += acc[j];
            out[i] = std::max(out[i], s);
        }
    }
}

}  // namespace

void quest_page_scores(const float* q, int64_t n_group, int64_t hd, const uint16_t* bounds, size_t page_stride,
                       const int32_t* page_ids, int64_t n_pages, float* out) {
    if (isa_active() == isa::avx512 && hd <= 1024)
        return detail::quest_page_scores_avx512(q, n_group, hd, bounds, page_stride, page_ids, n_pages, out);
    quest_page_scores_portable(q, n_group, hd, bounds, page_stride, page_ids, n_pages, out);
}

namespace ref {

void quest_page_scores(const float* q, int64_t n_group, int64_t hd, const uint16_t* bounds, size_t page_stride,
                       const int32_t* page_ids, int64_t n_pages, double* out) {
    for (int64_t i = 0; i < n_pages; ++i) {
        const uint16_t* mn = bounds + size_t(page_ids[i]) * page_stride;
        const uint16_t* mx = mn + hd;
        double best = -std::numeric_limits<double>::infinity();
        for (int64_t g = 0; g < n_group; ++g) {
            double s = 0;
            for (int64_t d = 0; d < hd; ++d)
                s += std::max(double(q[g * hd + d]) * bf16_to_f32(mn[d]), double(q[g * hd + d]) * bf16_to_f32(mx[d]));
            best = std::max(best, s);
        }
        out[i] = best;
    }
}

}  // namespace ref

}  // namespace kvs::cpu
