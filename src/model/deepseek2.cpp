// The DeepSeek-V2 forward pass over a ragged batch: absorbed multi-head latent attention over
// the latent KV group, dense or MoE FFN (see deepseek2.h for the equations and the contract).
#include "model/deepseek2.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/attention.h"
#include "kv/h2o.h"
#include "kv/quest.h"
#include "model/mla_unabsorbed.h"
#include "model/batch_check.h"
#include "model/cascade_attention.h"

namespace kvs {

namespace {

// Program points of deepseek2_model::forward, in order; the layer loop runs p_attn_norm ..
// p_layer_add once per layer, so a buffer read in the next layer is live over the whole body.
enum point : int32_t {
    p_embed,        // x = token rows (or the span's hidden_in)
    p_rope_angles,  // rope_cos, rope_sin of every row's position
    p_attn_norm,    // xb = rmsnorm(x) (the span's first layer; later layers get it from p_layer_add)
    p_proj,         // q (via q_a when q_lora > 0) and kva = xb · W_kv_a
    p_latent,       // kva = [rmsnorm(c); RoPE(k_pe)] written to the cache
    p_absorb,       // qlat = [W_UK,iᵀ q_nope_i; RoPE(q_pe_i)] per head (gathered through head_in/head_out)
    p_attention,    // attn, lse from qlat and the latent pages
    p_uv,           // heads = W_UV,i · attn_i[0, kv_lora) per head (through head_in/head_out); the
                    // un-absorbed rows: heads from q and their lifted keys and values
    p_wo,           // xb2 = heads · W_o
    p_ffn_norm,     // x += xb2; xb = rmsnorm(x)
    p_ffn,          // dense: gate = silu(xb · W_gate) ⊙ (xb · W_up); MoE: xb2 = moe(xb)
    p_down,         // dense: xb2 = gate · W_down
    p_layer_add,    // x += xb2; xb = rmsnorm(x) with the next layer's attn norm
    p_final_norm,   // out_rows = rmsnorm(x) of the logit rows
    p_lm_head,      // logits = out_rows · W_output
    p_after,        // the caller reads the logits until the next pass
};

enum buffer_id : int32_t {
    b_x, b_xb, b_xb2, b_qa, b_q, b_kva, b_qlat, b_attn, b_lse, b_head_in, b_head_out, b_heads, b_gate,
    b_rope_cos, b_rope_sin, b_out_rows, b_logits, n_buffers
};

}  // namespace

std::vector<activation_buffer> deepseek2_model::activation_buffers(int64_t max_tokens, int64_t max_logits) const {
    const model_hparams& hp = hp_;
    const size_t n = size_t(std::max<int64_t>(1, max_tokens)), n_logit_rows = size_t(std::max<int64_t>(1, max_logits));
    const size_t d = size_t(hp.n_embd), H = size_t(hp.n_head), entry = size_t(hp.kv_lora + hp.n_rot);
    const size_t n_pairs = size_t(std::max<int64_t>(1, hp.n_rot / 2));
    const size_t head_in = size_t(std::max(hp.qk_nope(), hp.kv_lora)), head_out = size_t(std::max(hp.kv_lora, hp.v_head));
    std::vector<activation_buffer> b(n_buffers);
    auto set = [&](buffer_id id, const char* name, size_t floats, std::vector<live_range> live) {
        b[size_t(id)] = activation_buffer{name, floats * sizeof(float), std::move(live)};
    };
    set(b_x, "x", n * d, {{p_embed, p_final_norm}});
    set(b_xb, "xb", n * d, {{p_attn_norm, p_proj}, {p_ffn_norm, p_ffn}, {p_layer_add, p_layer_add}});
    set(b_xb2, "xb2", n * d, {{p_wo, p_ffn_norm}, {p_ffn, p_layer_add}});
    set(b_qa, "q_a", n * size_t(std::max<int64_t>(1, hp.q_lora)), {{p_proj, p_proj}});
    // (Read again in p_uv by the rows attended in the un-absorbed form, mla_unabsorbed.h.)
    set(b_q, "q_heads", n * H * size_t(hp.head_dim), {{p_proj, p_uv}});
    set(b_kva, "kv_latent", n * entry, {{p_proj, p_latent}});
    set(b_qlat, "q_latent", n * H * entry, {{p_absorb, p_attention}});
    set(b_attn, "attn_latent", n * H * entry, {{p_attention, p_uv}});
    set(b_lse, "lse", n * H, {{p_attention, p_attention}});
    set(b_head_in, "head_in", n * head_in, {{p_absorb, p_absorb}, {p_uv, p_uv}});
    set(b_head_out, "head_out", n * head_out, {{p_absorb, p_absorb}, {p_uv, p_uv}});
    set(b_heads, "v_heads", n * H * size_t(hp.v_head), {{p_uv, p_wo}});
    set(b_gate, "gate", n * size_t(hp.n_layer_dense_lead > 0 ? hp.n_ff : 1), {{p_ffn, p_down}});
    set(b_rope_cos, "rope_cos", n * n_pairs, {{p_rope_angles, p_layer_add}});
    set(b_rope_sin, "rope_sin", n * n_pairs, {{p_rope_angles, p_layer_add}});
    set(b_out_rows, "out_rows", n_logit_rows * d, {{p_final_norm, p_lm_head}});
    set(b_logits, "logits", n_logit_rows * size_t(hp.n_vocab), {{p_lm_head, p_after}});
    return b;
}

status deepseek2_model::forward(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook,
                                const layer_span& span) const {
    if (kv.size() != 1) return status::error("a deepseek2 model has one KV group (the latent cache)");
    return forward(b, kv.primary(), st, pool, hook, span);
}

status deepseek2_model::forward(const batch& b, kv_cache& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook,
                                const layer_span& span) const {
    const model_hparams& hp = hp_;
    const int64_t n = b.size();
    const int64_t d = hp.n_embd, H = hp.n_head, hd = hp.head_dim, nope = hp.qk_nope(), n_rot = hp.n_rot;
    const int64_t lora = hp.kv_lora, vh = hp.v_head, entry = lora + n_rot, nq = H * hd;
    const int64_t n_out = b.n_logits();

    // Validate the whole batch before touching any state.
    if (n == 0) return status::ok();
    const kv_config& kc = kv.config();
    if (!kc.keys_only || kc.n_kv_head != 1 || kc.head_dim != entry || kc.n_layer != hp.n_layer)
        return status::error("kv cache: not this deepseek2 model's latent group (deepseek2_model::kv_geometry)");
    KVS_TRY(check_batch(b, kv, hp.n_vocab, st.max_tokens(), st.max_logits()));
    if (st.buffers().size() != size_t(n_buffers) || st.buffers()[b_qlat].name != "q_latent")
        return status::error("forward state: not made for a deepseek2 model");
    auto layers = check_layer_span(span, hp.n_layer, b, kv);
    if (!layers) return layers.error();
    const int64_t l_begin = layers.value().begin, l_end = layers.value().end;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t s = b.seq_ids[size_t(i)], slot = b.slots[size_t(i)];
        // H2O adds to the scores of every slot its rows attend and later moves tokens between
        // them: all its pages up to the row's are written.
        const int64_t first = kv.seq_policy(s).kind == kv_policy_kind::h2o ? 0 : slot;
        if (!kv.seq_prepare_write(s, first, int64_t(slot) + 1)) return status::error("kv cache: no free page for copy-on-write");
    }

    float* const x = st.buffer(b_x);
    float* const xb = st.buffer(b_xb);
    float* const xb2 = st.buffer(b_xb2);
    float* const qa = st.buffer(b_qa);
    float* const q = st.buffer(b_q);
    float* const kva = st.buffer(b_kva);
    float* const qlat = st.buffer(b_qlat);
    float* const attn = st.buffer(b_attn);
    float* const lse = st.buffer(b_lse);
    float* const head_in = st.buffer(b_head_in);
    float* const head_out = st.buffer(b_head_out);
    float* const heads = st.buffer(b_heads);
    float* const gate = st.buffer(b_gate);
    float* const rope_cos = st.buffer(b_rope_cos);
    float* const rope_sin = st.buffer(b_rope_sin);
    float* const out_rows = st.buffer(b_out_rows);
    float* const logits = st.buffer(b_logits);

    attention_plan& ap = st.plan_;
    KVS_TRY(plan_attention(n, b.seq_ids.data(), b.slots.data(), kv, ap, b.prompt.empty() ? nullptr : b.prompt.data()));

    // The sequences whose rows run un-absorbed (mla_unabsorbed.h): dense ones whose rows, by the
    // cost model, are cheaper so (a prefill chunk), or every dense one when forced. Their rows
    // read no latent in the absorbed pass (length 0) and leave the cascade's shared groups.
    const mla_dims dm{H, lora, nope, n_rot, vh};
    std::vector<std::vector<int32_t>>& un_groups = st.mla_groups_;  // per such sequence entry: its rows
    std::vector<int32_t>& abs_len = st.mla_abs_len_;               // (n) the absorbed pass's lengths
    un_groups.clear();
    std::vector<int32_t>& abs_rows = st.mla_abs_rows_;  // the other rows, ascending
    abs_rows.clear();
    // (A sequence with one row — decode — is never cheaper un-absorbed: a batch of those skips this.)
    const bool some_seq_has_rows = int64_t(ap.page_indptr.size()) - 1 < n;
    if (prefill_form_ == mla_prefill::unabsorbed || (prefill_form_ == mla_prefill::automatic && some_seq_has_rows)) {
        std::vector<std::vector<int32_t>> by_entry(ap.page_indptr.size() - 1);
        for (int64_t i = 0; i < n; ++i) by_entry[size_t(ap.q_seq[size_t(i)])].push_back(int32_t(i));
        for (auto& rows : by_entry) {
            if (rows.empty() || kv.seq_policy(b.seq_ids[size_t(rows[0])]).kind != kv_policy_kind::dense) continue;
            int64_t max_len = 0, total = 0;
            bool from_zero = true;
            for (int32_t r : rows) {
                max_len = std::max<int64_t>(max_len, ap.q_kv_len[size_t(r)]);
                total += ap.q_kv_len[size_t(r)];
                from_zero = from_zero && (!ap.any_begin || ap.q_kv_begin[size_t(r)] == 0);
            }
            if (from_zero && (prefill_form_ == mla_prefill::unabsorbed || mla_unabsorbed_cheaper(dm, int64_t(rows.size()), max_len, total)))
                un_groups.push_back(std::move(rows));
        }
    }
    std::vector<uint8_t>& un_mask = st.mla_row_mask_;
    un_mask.assign(size_t(n), 0);
    for (const auto& rows : un_groups)
        for (int32_t r : rows) un_mask[size_t(r)] = 1;
    abs_len = ap.q_kv_len;
    for (int64_t i = 0; i < n; ++i) {
        if (un_mask[size_t(i)]) abs_len[size_t(i)] = 0;
        else abs_rows.push_back(int32_t(i));
    }
    const bool any_un = !un_groups.empty();

    st.cascade_ = st.cascade_on_ && n > 1 ? plan_cascade(n, ap.q_seq.data(), ap.q_kv_len.data(), ap.page_indptr.data(), ap.page_ids.data(),
                                                         kc.page_size, {}, ap.any_begin ? ap.q_kv_begin.data() : nullptr,
                                                         any_un ? un_mask.data() : nullptr)
                                          : cascade_plan{};
    // Quest rows read their own pages from layer 2 on: there they leave the shared groups
    // (as in the llama family's forward pass).
    st.cascade_quest_ = cascade_plan{};
    if (!ap.quest_rows.empty() && !st.cascade_.empty()) {
        st.quest_row_mask_ = un_mask;
        for (int32_t r : ap.quest_rows) st.quest_row_mask_[size_t(r)] = 1;
        st.cascade_quest_ = plan_cascade(n, ap.q_seq.data(), ap.q_kv_len.data(), ap.page_indptr.data(), ap.page_ids.data(), kc.page_size, {},
                                         ap.any_begin ? ap.q_kv_begin.data() : nullptr, st.quest_row_mask_.data());
    }

    auto dump = [&](const char* name, int64_t layer, const float* data, int64_t rows, int64_t cols) {
        if (hook) hook(name, layer, data, rows, cols);
    };

    // Embeddings: dequantize each token's row (or take the residual stream entering the span).
    if (l_begin > 0) {
        std::copy_n(span.hidden_in, size_t(n * d), x);
    } else {
        const size_t emb_row = dtype_row_bytes(w_.token_embd->type, d);
        for (int64_t i = 0; i < n; ++i)
            dequantize_row(w_.token_embd->type, w_.token_embd->data + size_t(b.tokens[size_t(i)]) * emb_row, x + i * d, d);
    }

    const int64_t n_pairs = std::max<int64_t>(1, n_rot / 2);
    for (int64_t i = 0; i < n; ++i) {
        if (hp.rope_yarn) yarn_.angles(b.positions[size_t(i)], rope_cos + i * n_pairs, rope_sin + i * n_pairs);
        else cpu::rope_angles(n_rot, b.positions[size_t(i)], hp.rope_freq_base, hp.rope_freq_scale, rope_cos + i * n_pairs, rope_sin + i * n_pairs);
    }

    cpu::attention_batch ab;
    ab.n_q = n;
    ab.n_head = H;
    ab.q = qlat;
    ab.q_seq = ap.q_seq.data();
    ab.q_kv_len = abs_len.data();
    ab.q_kv_begin = ap.any_begin ? ap.q_kv_begin.data() : nullptr;
    ab.page_indptr = ap.page_indptr.data();
    ab.page_ids = ap.page_ids.data();
    ab.scale = attention_scale();

    // StreamingLLM's sink pass (plan_.sink_rows): the row's absorbed query with its RoPE parts
    // turned from the row's position to sink_pos (the rotation composes: the same frequencies).
    const int64_t n_sink = int64_t(ap.sink_rows.size());
    cpu::attention_batch sink_ab = ab;
    if (n_sink > 0) {
        st.sink_q.resize(size_t(n_sink * H * entry));
        st.sink_o.resize(size_t(n_sink * H * entry));
        st.sink_lse.resize(size_t(n_sink * H));
        st.sink_cos.resize(size_t(n_sink * n_pairs));
        st.sink_sin.resize(size_t(n_sink * n_pairs));
        for (int64_t j = 0; j < n_sink; ++j) {
            const int64_t delta = int64_t(ap.sink_pos[size_t(j)]) - b.positions[size_t(ap.sink_rows[size_t(j)])];
            if (hp.rope_yarn) yarn_.angles(delta, st.sink_cos.data() + j * n_pairs, st.sink_sin.data() + j * n_pairs);
            else cpu::rope_angles(n_rot, delta, hp.rope_freq_base, hp.rope_freq_scale, st.sink_cos.data() + j * n_pairs, st.sink_sin.data() + j * n_pairs);
        }
        sink_ab.n_q = n_sink;
        sink_ab.q = st.sink_q.data();
        sink_ab.q_seq = ap.sink_q_seq.data();
        sink_ab.q_kv_len = ap.sink_len.data();
        sink_ab.q_kv_begin = nullptr;
    }

    // Rows at most this many: the per-head products run one task per head (see below).
    constexpr int64_t per_head_task_rows = 4;
    const bool per_head_tasks = n <= per_head_task_rows && pool.n_threads() > 1;
    if (per_head_tasks)
        while (st.solo_pools_.size() < size_t(pool.n_threads())) st.solo_pools_.push_back(std::make_unique<thread_pool>(1));

    for (int64_t il = l_begin; il < l_end; ++il) {
        const deepseek2_layer& L = w_.layers[size_t(il)];
        if (il == l_begin)
            for (int64_t i = 0; i < n; ++i) cpu::rmsnorm(x + i * d, L.attn_norm, xb + i * d, d, hp.rms_eps);
        dump("attn_norm", il, xb, n, d);

        // Projections: the query path and the latent [c; k_pe] in one pass over xb.
        if (hp.q_lora > 0) {
            const cpu::weight_view w2[2] = {L.wq_a, L.wkv_a};
            float* const y2[2] = {qa, kva};
            cpu::matmul_multi(w2, 2, xb, n, y2, pool);
            for (int64_t i = 0; i < n; ++i) cpu::rmsnorm(qa + i * hp.q_lora, L.q_a_norm, qa + i * hp.q_lora, hp.q_lora, hp.rms_eps);
            cpu::matmul(L.wq_b, qa, n, q, pool);
        } else {
            const cpu::weight_view w2[2] = {L.wq, L.wkv_a};
            float* const y2[2] = {q, kva};
            cpu::matmul_multi(w2, 2, xb, n, y2, pool);
        }
        for (int64_t i = 0; i < n; ++i) {
            float* e = kva + i * entry;
            cpu::rmsnorm(e, L.kv_a_norm, e, lora, hp.rms_eps);
            const float* rc = rope_cos + i * n_pairs;
            const float* rs = rope_sin + i * n_pairs;
            cpu::rope_apply(e + lora, 1, n_rot, n_rot, rc, rs, cpu::rope_layout::normal);
            for (int64_t h = 0; h < H; ++h) cpu::rope_apply(q + i * nq + h * hd + nope, 1, n_rot, n_rot, rc, rs, cpu::rope_layout::normal);
        }
        dump("q", il, q, n, nq);
        dump("kv_latent", il, kva, n, entry);
        // The entry is K and V alike (keys-only group): the same row for both.
        for (int64_t i = 0; i < n; ++i)
            kv.write(il, b.seq_ids[size_t(i)], b.slots[size_t(i)], kva + i * entry, kva + i * entry, b.positions[size_t(i)]);

        // Absorbed queries: per head, q_latent = W_UK,iᵀ q_nope (kv_lora), then the rotated q_pe.
        // A few rows (decode): one task per head, each row's slices read in place (one fork
        // for all heads); more rows: per head, the rows gathered into one matmul over the pool.
        if (per_head_tasks) {
            pool.run(H, [&](int64_t h, int thread) {
                thread_pool& solo = *st.solo_pools_[size_t(thread)];
                const cpu::weight_view w = L.wk_b_t_head(h);
                for (int64_t i = 0; i < n; ++i) {
                    float* dst = qlat + (i * H + h) * entry;
                    cpu::matmul(w, q + i * nq + h * hd, 1, dst, solo);
                    std::memcpy(dst + lora, q + i * nq + h * hd + nope, size_t(n_rot) * sizeof(float));
                }
            });
        } else if (!abs_rows.empty())
        for (int64_t h = 0; h < H; ++h) {
            const int64_t na = int64_t(abs_rows.size());
            for (int64_t j = 0; j < na; ++j) std::memcpy(head_in + j * nope, q + abs_rows[size_t(j)] * nq + h * hd, size_t(nope) * sizeof(float));
            cpu::matmul(L.wk_b_t_head(h), head_in, na, head_out, pool);
            for (int64_t j = 0; j < na; ++j) {
                const int64_t i = abs_rows[size_t(j)];
                float* dst = qlat + (i * H + h) * entry;
                std::memcpy(dst, head_out + j * lora, size_t(lora) * sizeof(float));
                std::memcpy(dst + lora, q + i * nq + h * hd + nope, size_t(n_rot) * sizeof(float));
            }
        }
        if (!ap.quest_rows.empty() && il >= 2) {  // Quest: the first two layers stay dense
            // One latent "head": each row's pages are chosen by the bounds of its latent
            // entries against all H absorbed queries (the page's best score over the heads).
            KVS_TRY(quest_select(ap, kv, il, qlat, H, st.quest_, pool));
            for (int64_t i = 0; i < n; ++i)
                if (un_mask[size_t(i)]) st.quest_.q_kv_len[size_t(i)] = 0;  // attended un-absorbed
            cpu::attention_batch qb = ab;
            qb.page_indptr = st.quest_.page_indptr.data();
            qb.page_ids = st.quest_.page_ids.data();
            qb.seq_head_entry = st.quest_.seq_head_entry.data();
            qb.q_kv_len = st.quest_.q_kv_len.data();
            attention_with_cascade(qb, kv.view(il), st.cascade_quest_, attn, lse, st.cascade_scratch_, pool);
            if (st.quest_trace_) {
                size_t off = 0;
                for (size_t j = 0; j < ap.quest_rows.size(); ++j) {
                    const int64_t k = ap.quest_pages[j];
                    st.quest_trace_->push_back({il, ap.quest_rows[j], 0,
                                                std::vector<int32_t>(st.quest_.table_index.begin() + long(off),
                                                                     st.quest_.table_index.begin() + long(off) + k)});
                    off += size_t(k);
                }
            }
            if (st.quest_mass_on_)
                quest_attention_mass(ap, st.quest_, kv, il, qlat, H, ab.scale, st.quest_mass_sum_, st.quest_mass_n_);
            st.quest_pages_read_ += st.quest_.pages_read;
            st.quest_pages_dense_ += st.quest_.pages_dense;
        } else {
            attention_with_cascade(ab, kv.view(il), st.cascade_, attn, lse, st.cascade_scratch_, pool);
        }
        if (!ap.h2o_entries.empty()) {  // H2O: the probabilities each kept latent received, summed over the heads
            KVS_TRY(h2o_accumulate(ap, kv, il, qlat, H, ab.scale, pool));
            if (st.h2o_mass_on_) {
                st.h2o_mass_.record(ap, b.seq_ids.data(), b.positions.data(), il, kva, entry);
                st.h2o_mass_.measure(ap, kv, b.seq_ids.data(), b.positions.data(), il, qlat, H, ab.scale);
            }
        }
        if (n_sink > 0) {
            for (int64_t j = 0; j < n_sink; ++j) {
                float* qs = st.sink_q.data() + j * H * entry;
                std::memcpy(qs, qlat + int64_t(ap.sink_rows[size_t(j)]) * H * entry, size_t(H * entry) * sizeof(float));
                for (int64_t h = 0; h < H; ++h)
                    cpu::rope_apply(qs + h * entry + lora, 1, n_rot, n_rot, st.sink_cos.data() + j * n_pairs, st.sink_sin.data() + j * n_pairs,
                                    cpu::rope_layout::normal);
            }
            cpu::attention_paged(sink_ab, kv.view(il), st.sink_o.data(), st.sink_lse.data(), pool);
            for (int64_t j = 0; j < n_sink; ++j) {
                const int64_t r = ap.sink_rows[size_t(j)];
                cpu::attention_merge(attn + r * H * entry, lse + r * H, st.sink_o.data() + j * H * entry, st.sink_lse.data() + j * H, H, entry);
            }
        }
        dump("kqv_latent", il, attn, n, H * entry);

        // Values: per head, W_UV,i · (the attended latent).
        auto w_uv = [&](int64_t h) { return L.wv_b_head(h, vh); };
        if (per_head_tasks) {
            pool.run(H, [&](int64_t h, int thread) {
                thread_pool& solo = *st.solo_pools_[size_t(thread)];
                const cpu::weight_view w = w_uv(h);
                for (int64_t i = 0; i < n; ++i) cpu::matmul(w, attn + (i * H + h) * entry, 1, heads + i * H * vh + h * vh, solo);
            });
        } else if (!abs_rows.empty())
        for (int64_t h = 0; h < H; ++h) {
            const int64_t na = int64_t(abs_rows.size());
            for (int64_t j = 0; j < na; ++j) std::memcpy(head_in + j * lora, attn + (abs_rows[size_t(j)] * H + h) * entry, size_t(lora) * sizeof(float));
            cpu::matmul(w_uv(h), head_in, na, head_out, pool);
            for (int64_t j = 0; j < na; ++j) std::memcpy(heads + abs_rows[size_t(j)] * H * vh + h * vh, head_out + j * vh, size_t(vh) * sizeof(float));
        }
        // The un-absorbed rows: per-head attention over their context's lifted keys and values.
        for (const auto& rows : un_groups) {
            const int32_t e = ap.q_seq[size_t(rows[0])];
            // Rows of one sequence are consecutive in a batch (check_batch); gathered if not.
            bool consecutive = true;
            for (size_t j = 1; j < rows.size(); ++j) consecutive = consecutive && rows[j] == rows[j - 1] + 1;
            st.mla_len_.resize(rows.size());
            for (size_t j = 0; j < rows.size(); ++j) st.mla_len_[j] = ap.q_kv_len[size_t(rows[j])];
            if (consecutive) {
                mla_attend_unabsorbed(dm, L.kv_up(H), kv.view(il), ap.page_ids.data() + ap.page_indptr[size_t(e)], int64_t(rows.size()),
                                      st.mla_len_.data(), q + rows[0] * nq, nq, ab.scale, heads + rows[0] * H * vh, H * vh, st.mla_, pool);
            } else {
                for (size_t j = 0; j < rows.size(); ++j)
                    mla_attend_unabsorbed(dm, L.kv_up(H), kv.view(il), ap.page_ids.data() + ap.page_indptr[size_t(e)], 1, st.mla_len_.data() + j,
                                          q + rows[j] * nq, nq, ab.scale, heads + rows[j] * H * vh, H * vh, st.mla_, pool);
            }
        }
        dump("kqv_out", il, heads, n, H * vh);
        cpu::matmul(L.wo, heads, n, xb2, pool);
        dump("attn_out", il, xb2, n, d);
        for (int64_t i = 0; i < n; ++i) cpu::add_rmsnorm(x + i * d, xb2 + i * d, L.ffn_norm, xb + i * d, d, hp.rms_eps);
        dump("ffn_inp", il, x, n, d);
        dump("ffn_norm", il, xb, n, d);

        if (L.dense()) {
            cpu::matmul_swiglu(L.w_gate, L.w_up, xb, n, gate, nullptr, gate, pool);
            cpu::matmul(L.w_down, gate, n, xb2, pool);
        } else {
            moe_ffn(L.moe, xb, n, xb2, st.moe_, pool);
        }
        dump("ffn_out", il, xb2, n, d);
        if (il + 1 < l_end) {
            const float* next_norm = w_.layers[size_t(il + 1)].attn_norm;
            for (int64_t i = 0; i < n; ++i) cpu::add_rmsnorm(x + i * d, xb2 + i * d, next_norm, xb + i * d, d, hp.rms_eps);
        } else {
            for (int64_t j = 0; j < n * d; ++j) x[size_t(j)] += xb2[size_t(j)];
        }
        dump("l_out", il, x, n, d);
    }

    // H2O: the latent of each H2O sequence cuts back to its budget in every layer.
    for (size_t e = 0; e < ap.h2o_seqs.size(); ++e) KVS_TRY(h2o_cut_back(kv, ap.h2o_seqs[e], ap.h2o_filled[e]));

    if (span.hidden_out) std::copy_n(x, size_t(n * d), span.hidden_out);  // embeddings pool these
    int64_t r = 0;
    for (int64_t i = 0; i < n; ++i)
        if (b.want_logits[size_t(i)]) {
            cpu::rmsnorm(x + i * d, w_.output_norm, out_rows + r * d, d, hp.rms_eps);
            ++r;
        }
    if (n_out > 0) {
        dump("result_norm", -1, out_rows, n_out, d);
        cpu::matmul(w_.output, out_rows, n_out, logits, pool);
        dump("result_output", -1, logits, n_out, hp.n_vocab);
    }
    return status::ok();
}

}  // namespace kvs
