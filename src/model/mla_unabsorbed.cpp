#include "model/mla_unabsorbed.h"

#include <algorithm>
#include <cstring>

namespace kvs {

bool mla_unabsorbed_cheaper(const mla_dims& dm, int64_t n_rows, int64_t max_len, int64_t total_len) {
    // A single row (decode) stays absorbed: the lifting alone costs what its whole absorbed
    // attention does once the context holds two tokens (for one token, the two are even).
    if (n_rows < 2) return false;
    const double H = double(dm.n_head), lora = double(dm.kv_lora), up = double(dm.qk_nope + dm.v_head);
    // Multiply-adds of each form, the per-head attention's counted double (each head streams its
    // own keys and values, where the latent attention shares one tile among all heads). With
    // these weights the model's choice follows the measurements on the Lite shape
    // (docs/deepseek2.md, "Prefill in two forms"): chunks of 512 rows un-absorbed (1.1x at
    // pp512, 1.3x at pp4096), decode absorbed, and chunks of 64 rows, where the two forms
    // measure alike, mostly absorbed.
    constexpr double absorbed_rate = 1.0, lift_rate = 1.0, per_head_rate = 0.5;
    const double absorbed = double(total_len) * H * double(dm.entry() + dm.kv_lora) / absorbed_rate +
                            double(n_rows) * H * (double(dm.qk_nope) + double(dm.v_head)) * lora / lift_rate;
    const double unabsorbed = double(max_len) * H * up * lora / lift_rate + double(total_len) * H * 2.0 * double(dm.qk()) / per_head_rate;
    return unabsorbed < absorbed;
}

void mla_attend_unabsorbed(const mla_dims& dm, const cpu::weight_view& kv_up, const cpu::paged_kv_view& latent, const int32_t* pages,
                           int64_t n_rows, const int32_t* len, const float* q, int64_t q_stride, float scale, float* heads,
                           int64_t heads_stride, mla_unabsorbed_scratch& sc, thread_pool& pool) {
    const int64_t H = dm.n_head, lora = dm.kv_lora, nope = dm.qk_nope, rope = dm.qk_rope, vh = dm.v_head, qk = dm.qk();
    const int64_t up = nope + vh, ent = dm.entry(), ps = latent.page_size;
    if (n_rows <= 0) return;
    int64_t L = 0;
    for (int64_t i = 0; i < n_rows; ++i) L = std::max<int64_t>(L, len[i]);
    if (L == 0) {
        for (int64_t i = 0; i < n_rows; ++i) std::fill_n(heads + i * heads_stride, H * vh, 0.0f);
        return;
    }
    sc.c.resize(size_t(L * lora));
    sc.k_pe.resize(size_t(L * rope));
    sc.kv_up.resize(size_t(L * H * up));
    sc.k.resize(size_t(H * L * qk));
    sc.v.resize(size_t(H * L * qk));
    sc.q.resize(size_t(n_rows * H * qk));
    sc.o.resize(size_t(n_rows * H * qk));
    sc.lse.resize(size_t(n_rows * H));
    sc.zeros.assign(size_t(n_rows), 0);

    // The context's latents [c; k_pe] as stored (any KV format), split in two.
    const cpu::kv_page_layout lay = latent.layout();
    constexpr int64_t slots_per_task = 64;
    pool.run((L + slots_per_task - 1) / slots_per_task, [&](int64_t task, int) {
        thread_local std::vector<float> row;
        row.resize(size_t(ent));
        for (int64_t t = task * slots_per_task; t < std::min(L, (task + 1) * slots_per_task); ++t) {
            cpu::kv_load_k_row(lay, latent.k_block(pages[t / ps], 0), t % ps, row.data());
            std::memcpy(sc.c.data() + t * lora, row.data(), size_t(lora) * sizeof(float));
            std::memcpy(sc.k_pe.data() + t * rope, row.data() + lora, size_t(rope) * sizeof(float));
        }
    });
    // Per head [k_nope; v] of every context token: W_kv_b c.
    cpu::matmul(kv_up, sc.c.data(), L, sc.kv_up.data(), pool);
    // One f32 page per head: k = [k_nope; k_pe], v = [v; 0] (the kernel reads K and V of one width).
    pool.run(H, [&](int64_t h, int) {
        for (int64_t t = 0; t < L; ++t) {
            const float* src = sc.kv_up.data() + (t * H + h) * up;
            float* k = sc.k.data() + (h * L + t) * qk;
            float* v = sc.v.data() + (h * L + t) * qk;
            std::memcpy(k, src, size_t(nope) * sizeof(float));
            std::memcpy(k + nope, sc.k_pe.data() + t * rope, size_t(rope) * sizeof(float));
            std::memcpy(v, src + nope, size_t(vh) * sizeof(float));
            std::fill(v + vh, v + qk, 0.0f);
        }
    });
    for (int64_t i = 0; i < n_rows; ++i) std::memcpy(sc.q.data() + i * H * qk, q + i * q_stride, size_t(H * qk) * sizeof(float));

    const int32_t indptr[2] = {0, 1}, page0 = 0;
    cpu::attention_batch ab;
    ab.n_q = n_rows;
    ab.n_head = H;
    ab.q = sc.q.data();
    ab.q_seq = sc.zeros.data();
    ab.q_kv_len = len;
    ab.page_indptr = indptr;
    ab.page_ids = &page0;
    ab.scale = scale;
    const cpu::paged_kv_view view{sc.k.data(), sc.v.data(), H, L, qk, dtype::f32, 0, std::nullopt};
    cpu::attention_paged(ab, view, sc.o.data(), sc.lse.data(), pool);
    for (int64_t i = 0; i < n_rows; ++i)
        for (int64_t h = 0; h < H; ++h)
            std::memcpy(heads + i * heads_stride + h * vh, sc.o.data() + (i * H + h) * qk, size_t(vh) * sizeof(float));
}

}  // namespace kvs
