// The Llama-family forward pass over a ragged batch (see llama.h for the contract).
#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/cpu/attention.h"
#include "model/batch_check.h"

namespace kvs {

namespace {

// Program points of llama_model::forward, in order; the layer loop runs p_attn_norm ..
// p_layer_add once per layer, so a buffer read in the next layer is live over the whole body.
enum point : int32_t {
    p_embed,        // x = token rows (or the span's hidden_in)
    p_rope_angles,  // rope_cos, rope_sin of every row's position
    p_attn_norm,    // xb = rmsnorm(x) (the span's first layer; later layers get it from p_layer_add)
    p_qkv,          // q, k, v = xb · (Wq, Wk, Wv) (+ biases)
    p_rope,         // q, k rotated
    p_kv_write,     // k, v stored in the cache
    p_attention,    // attn, lse from q and the cache. Also: Quest selects with q, H2O scores with q
                    // (its probe reads k), the sink pass copies q and merges into attn, lse
    p_wo,           // xb2 = attn · Wo
    p_ffn_norm,     // x += xb2; xb = rmsnorm(x)
    p_ffn,          // per block of llama_ffn_row_block rows (llama_ffn_residual):
                    // gate = silu(xb · Wgate) * (xb · Wup), tile by tile (the up tile in the matmul's scratch);
                    // ffn_out = gate · Wdown; x += ffn_out; xb = rmsnorm(x) with the next layer's attn norm
    p_final_norm,   // hidden_out = x; out_rows = rmsnorm(x) of the logit rows
    p_lm_head,      // logits = out_rows · Woutput
    p_after,        // the caller reads the logits until the next pass
};

// The activation buffers, in arena order (forward_state::buffers_ and the pointers after it).
enum buffer_id : int32_t { b_x, b_xb, b_xb2, b_q, b_attn, b_k, b_v, b_lse, b_gate, b_ffn_out, b_rope_cos, b_rope_sin, b_out_rows, b_logits, n_buffers };

}  // namespace

std::vector<activation_buffer> llama_activation_buffers(const model_hparams& hp, int64_t max_tokens, int64_t max_logits) {
    const size_t n = size_t(std::max<int64_t>(1, max_tokens)), n_logit_rows = size_t(std::max<int64_t>(1, max_logits));
    const size_t d = size_t(hp.n_embd), nq = size_t(hp.n_head * hp.head_dim), nkv = size_t(hp.n_head_kv * hp.head_dim);
    const size_t n_pairs = size_t(std::max<int64_t>(1, std::min(hp.n_rot, hp.head_dim) / 2));
    std::vector<activation_buffer> b(n_buffers);
    auto set = [&](buffer_id id, const char* name, size_t floats, std::vector<live_range> live) {
        b[size_t(id)] = activation_buffer{name, floats * sizeof(float), std::move(live)};
    };
    set(b_x, "x", n * d, {{p_embed, p_final_norm}});
    // Dead from the QKV matmul to the FFN norm.
    set(b_xb, "xb", n * d, {{p_attn_norm, p_qkv}, {p_ffn_norm, p_ffn}});
    set(b_xb2, "xb2", n * d, {{p_wo, p_ffn_norm}});
    set(b_q, "q", n * nq, {{p_qkv, p_attention}});
    set(b_attn, "attn", n * nq, {{p_attention, p_wo}});
    set(b_k, "k", n * nkv, {{p_qkv, p_attention}});
    set(b_v, "v", n * nkv, {{p_qkv, p_kv_write}});
    set(b_lse, "lse", n * size_t(hp.n_head), {{p_attention, p_attention}});
    // The FFN's intermediate and output hold one block of rows.
    const size_t ffn_rows = std::min<size_t>(n, size_t(llama_ffn_row_block));
    set(b_gate, "gate", ffn_rows * size_t(hp.n_ff), {{p_ffn, p_ffn}});
    set(b_ffn_out, "ffn_out", ffn_rows * d, {{p_ffn, p_ffn}});
    set(b_rope_cos, "rope_cos", n * n_pairs, {{p_rope_angles, p_ffn}});
    set(b_rope_sin, "rope_sin", n * n_pairs, {{p_rope_angles, p_ffn}});
    set(b_out_rows, "out_rows", n_logit_rows * d, {{p_final_norm, p_lm_head}});
    set(b_logits, "logits", n_logit_rows * size_t(hp.n_vocab), {{p_lm_head, p_after}});
    return b;
}


void llama_ffn_residual(const llama_layer& L, const float* next_norm, float rms_eps, int64_t n, float* x, float* xb, float* gate,
                        float* ffn_out, thread_pool& pool, const tensor_hook& hook, int64_t layer) {
    const int64_t d = L.w_down.n_out;
    for (int64_t r0 = 0; r0 < n; r0 += llama_ffn_row_block) {
        const int64_t rows = std::min(llama_ffn_row_block, n - r0);
        float* const xr = x + r0 * d;
        float* const xbr = xb + r0 * d;
        // gate and up in one pass, SwiGLU applied per chunk while it is in cache.
        cpu::matmul_swiglu(L.w_gate, L.w_up, xbr, rows, gate, nullptr, gate, pool);
        cpu::matmul(L.w_down, gate, rows, ffn_out, pool);
        if (hook) hook("ffn_out", layer, ffn_out, rows, d);
        if (next_norm) {  // residual add fused with the next layer's attention norm
            for (int64_t i = 0; i < rows; ++i) cpu::add_rmsnorm(xr + i * d, ffn_out + i * d, next_norm, xbr + i * d, d, rms_eps);
        } else {
            for (int64_t j = 0; j < rows * d; ++j) xr[j] += ffn_out[j];
        }
    }
}

void llama_model::final_norm(const float* x, float* y) const { cpu::rmsnorm(x, w_.output_norm, y, hp_.n_embd, hp_.rms_eps); }

namespace {

void add_bias(float* y, const float* bias, int64_t rows, int64_t cols) {
    if (!bias) return;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) y[r * cols + c] += bias[c];
}

}  // namespace

status llama_model::forward(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook,
                            const layer_span& span) const {
    if (hp_.yoco()) {
        if (span.begin != 0 || (span.end >= 0 && span.end != hp_.n_layer) || span.hidden_out)
            return status::error("a yoco model runs whole forward passes only (no layer spans)");
        if (kv.size() != 2) return status::error("a yoco model needs its two KV groups (global, self)");
        return forward_yoco(b, kv, st, pool, hook);
    }
    if (kv.size() != 1) return status::error("a Llama-family model has one KV group");
    return forward(b, kv.primary(), st, pool, hook, span);
}

status llama_model::forward(const batch& b, kv_cache& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook,
                            const layer_span& span) const {
    if (hp_.yoco()) return status::error("a yoco model's forward pass needs its KV groups (llama_model::kv_group_layout)");
    const model_hparams& hp = hp_;
    const int64_t n = b.size();
    const int64_t d = hp.n_embd, hd = hp.head_dim, nq = hp.n_head * hd, nkv = hp.n_head_kv * hd;
    const int64_t n_out = b.n_logits();

    // Validate the whole batch before touching any state.
    if (n == 0) return status::ok();
    KVS_TRY(check_batch(b, kv, hp.n_vocab, st.max_tokens(), st.max_logits()));
    auto layers = check_layer_span(span, hp.n_layer, b, kv);
    if (!layers) return layers.error();
    const int64_t l_begin = layers.value().begin, l_end = layers.value().end;
    const bool partial = layers.value().partial;
    if (partial && kv.kivi()) return status::error("a layer span cannot run over a KIVI cache (pages are packed after the last layer)");
    // Copy-on-write for every page this batch writes (per sequence, its slot range).
    for (int64_t i = 0; i < n; ++i) {
        const int32_t s = b.seq_ids[size_t(i)], slot = b.slots[size_t(i)];
        // H2O adds to the scores of every slot its rows attend and later moves tokens between
        // them: all its pages up to the row's are written.
        const int64_t first = kv.seq_policy(s).kind == kv_policy_kind::h2o ? 0 : slot;
        if (!kv.seq_prepare_write(s, first, int64_t(slot) + 1))
            return status::error("kv cache: no free page for copy-on-write");
    }

    // Page tables and slot ranges of every row (the sequences' policies), and the cascade
    // plan over them: decided once, used by every layer.
    attention_plan& ap = st.plan_;
    KVS_TRY(plan_attention(n, b.seq_ids.data(), b.slots.data(), kv, ap, b.prompt.empty() ? nullptr : b.prompt.data()));
    // (KIVI: rows of one shared prefix may read its pages in different forms; no cascade.)
    st.cascade_ = st.cascade_on_ && n > 1 && !kv.kivi() ? plan_cascade(n, ap.q_seq.data(), ap.q_kv_len.data(), ap.page_indptr.data(),
                                                         ap.page_ids.data(), kv.config().page_size, {},
                                                         ap.any_begin ? ap.q_kv_begin.data() : nullptr)
                                          : cascade_plan{};
    // From layer 2 on a Quest row reads its own pages per head, which a shared pass over the
    // whole prefix would not respect: there the Quest rows leave their groups (and attend
    // through their lists) while the other rows keep sharing. Layers 0 and 1 use the full plan.
    st.cascade_quest_ = cascade_plan{};
    if (!ap.quest_rows.empty() && !st.cascade_.empty()) {
        st.quest_row_mask_.assign(size_t(n), 0);
        for (int32_t r : ap.quest_rows) st.quest_row_mask_[size_t(r)] = 1;
        st.cascade_quest_ = plan_cascade(n, ap.q_seq.data(), ap.q_kv_len.data(), ap.page_indptr.data(), ap.page_ids.data(),
                                         kv.config().page_size, {}, ap.any_begin ? ap.q_kv_begin.data() : nullptr,
                                         st.quest_row_mask_.data());
    }

    auto dump = [&](const char* name, int64_t layer, const float* data, int64_t rows, int64_t cols) {
        if (hook) hook(name, layer, data, rows, cols);
    };

    // Embeddings: dequantize each token's row (or take the residual stream entering the span).
    if (l_begin > 0) {
        std::copy_n(span.hidden_in, size_t(n * d), st.x);
    } else {
        const size_t emb_row = dtype_row_bytes(w_.token_embd->type, d);
        for (int64_t i = 0; i < n; ++i)
            dequantize_row(w_.token_embd->type, w_.token_embd->data + size_t(b.tokens[size_t(i)]) * emb_row, st.x + i * d, d);
    }

    // RoPE angles of every row's position, shared by q and k of all layers.
    const int64_t n_rot = std::min(hp.n_rot, hd), n_pairs = std::max<int64_t>(1, n_rot / 2);
    for (int64_t i = 0; i < n; ++i)
        cpu::rope_angles(n_rot, b.positions[size_t(i)], hp.rope_freq_base, hp.rope_freq_scale,
                         st.rope_cos + i * n_pairs, st.rope_sin + i * n_pairs);

    cpu::attention_batch ab;
    ab.n_q = n;
    ab.n_head = hp.n_head;
    ab.q = st.q;
    ab.q_seq = ap.q_seq.data();
    ab.q_kv_len = ap.q_kv_len.data();
    ab.q_kv_begin = ap.any_begin ? ap.q_kv_begin.data() : nullptr;
    ab.page_indptr = ap.page_indptr.data();
    ab.page_ids = ap.page_ids.data();
    ab.scale = 1.0f / std::sqrt(float(hd));

    // Sink pass (StreamingLLM): per sink row, the rotation from its position to sink_pos.
    const int64_t n_sink = int64_t(ap.sink_rows.size());
    cpu::attention_batch sink_ab = ab;
    if (n_sink > 0) {
        st.sink_q.resize(size_t(n_sink * nq));
        st.sink_o.resize(size_t(n_sink * nq));
        st.sink_lse.resize(size_t(n_sink * hp.n_head));
        st.sink_cos.resize(size_t(n_sink * n_pairs));
        st.sink_sin.resize(size_t(n_sink * n_pairs));
        for (int64_t j = 0; j < n_sink; ++j) {
            const int64_t delta = int64_t(ap.sink_pos[size_t(j)]) - b.positions[size_t(ap.sink_rows[size_t(j)])];
            cpu::rope_angles(n_rot, delta, hp.rope_freq_base, hp.rope_freq_scale, st.sink_cos.data() + j * n_pairs,
                             st.sink_sin.data() + j * n_pairs);
        }
        sink_ab.n_q = n_sink;
        sink_ab.q = st.sink_q.data();
        sink_ab.q_seq = ap.sink_q_seq.data();
        sink_ab.q_kv_len = ap.sink_len.data();
        sink_ab.q_kv_begin = nullptr;
    }

    // KIVI: each row's packed and full-precision pages, and the sequences whose pages this
    // step ages out (their twins are quantized layer by layer below).
    std::vector<int32_t> kivi_seqs;
    if (kv.kivi()) {
        KVS_TRY(plan_kivi(ab, b.seq_ids.data(), b.slots.data(), kv, st.kivi_));
        if (n_sink > 0) {
            st.kivi_sink_seq_.resize(size_t(n_sink));
            st.kivi_sink_slot_.resize(size_t(n_sink));
            for (int64_t j = 0; j < n_sink; ++j) {
                st.kivi_sink_seq_[size_t(j)] = b.seq_ids[size_t(ap.sink_rows[size_t(j)])];
                st.kivi_sink_slot_[size_t(j)] = b.slots[size_t(ap.sink_rows[size_t(j)])];
            }
            KVS_TRY(plan_kivi(sink_ab, st.kivi_sink_seq_.data(), st.kivi_sink_slot_.data(), kv, st.kivi_sink_));
        }
        for (int32_t s : b.seq_ids)
            if (kv.kivi_pending(s) && std::find(kivi_seqs.begin(), kivi_seqs.end(), s) == kivi_seqs.end()) kivi_seqs.push_back(s);
    }

    for (int64_t il = l_begin; il < l_end; ++il) {
        const llama_layer& L = w_.layers[size_t(il)];
        // Attention block. (After the span's first layer, the previous layer's residual add
        // already wrote this norm: add_rmsnorm below.)
        if (il == l_begin)
            for (int64_t i = 0; i < n; ++i) cpu::rmsnorm(st.x + i * d, L.attn_norm, st.xb + i * d, d, hp.rms_eps);
        dump("attn_norm", il, st.xb, n, d);
        {
            // Q, K and V in one pass over the activations (one fork/join, x quantized once).
            const cpu::weight_view wqkv[3] = {L.wq, L.wk, L.wv};
            float* const yqkv[3] = {st.q, st.k, st.v};
            cpu::matmul_multi(wqkv, 3, st.xb, n, yqkv, pool);
        }
        add_bias(st.q, L.bq, n, nq);
        add_bias(st.k, L.bk, n, nkv);
        add_bias(st.v, L.bv, n, nkv);
        for (int64_t i = 0; i < n; ++i) {
            const float* rc = st.rope_cos + i * n_pairs;
            const float* rs = st.rope_sin + i * n_pairs;
            cpu::rope_apply(st.q + i * nq, hp.n_head, hd, n_rot, rc, rs, hp.rope);
            cpu::rope_apply(st.k + i * nkv, hp.n_head_kv, hd, n_rot, rc, rs, hp.rope);
        }
        dump("Qcur", il, st.q, n, nq);
        dump("Kcur", il, st.k, n, nkv);
        dump("Vcur", il, st.v, n, nkv);
        for (int64_t i = 0; i < n; ++i)
            kv.write(il, b.seq_ids[size_t(i)], b.slots[size_t(i)], st.k + i * nkv, st.v + i * nkv, b.positions[size_t(i)]);
        for (int32_t s : kivi_seqs) kv.kivi_pack_layer(il, s);
        if (!ap.quest_rows.empty() && il >= 2) {  // Quest: the first two layers stay dense
            KVS_TRY(quest_select(ap, kv, il, st.q, hp.n_head, st.quest_, pool));
            cpu::attention_batch qb = ab;
            qb.page_indptr = st.quest_.page_indptr.data();
            qb.page_ids = st.quest_.page_ids.data();
            qb.seq_head_entry = st.quest_.seq_head_entry.data();
            qb.q_kv_len = st.quest_.q_kv_len.data();
            attention_with_cascade(qb, kv.view(il), st.cascade_quest_, st.attn, st.lse, st.cascade_scratch_, pool);
            if (st.quest_trace_) {
                const int64_t nkvh = hp.n_head_kv;
                size_t off = 0;
                for (size_t j = 0; j < ap.quest_rows.size(); ++j) {
                    const int64_t k = ap.quest_pages[j];
                    for (int64_t h = 0; h < nkvh; ++h, off += size_t(k))
                        st.quest_trace_->push_back({il, ap.quest_rows[j], int32_t(h),
                                                    std::vector<int32_t>(st.quest_.table_index.begin() + long(off),
                                                                         st.quest_.table_index.begin() + long(off) + k)});
                }
            }
            if (st.quest_mass_on_) quest_attention_mass(ap, st.quest_, kv, il, st.q, hp.n_head, ab.scale, st.quest_mass_sum_, st.quest_mass_n_);
            st.quest_pages_read_ += st.quest_.pages_read;
            st.quest_pages_dense_ += st.quest_.pages_dense;
        } else if (kv.kivi()) {
            kivi_attention(ab, st.kivi_, kv, il, st.attn, st.lse, st.kivi_scratch_, pool);
        } else {
            attention_with_cascade(ab, kv.view(il), st.cascade_, st.attn, st.lse, st.cascade_scratch_, pool);
        }
        if (!ap.h2o_entries.empty()) {  // H2O: the probabilities each kept token received
            KVS_TRY(h2o_accumulate(ap, kv, il, st.q, hp.n_head, ab.scale, pool));
            if (st.h2o_mass_on_) {
                st.h2o_mass_.record(ap, b.seq_ids.data(), b.positions.data(), il, st.k, nkv);
                st.h2o_mass_.measure(ap, kv, b.seq_ids.data(), b.positions.data(), il, st.q, hp.n_head, ab.scale);
            }
        }
        if (n_sink > 0) {
            for (int64_t j = 0; j < n_sink; ++j) {
                float* qs = st.sink_q.data() + j * nq;
                std::copy_n(st.q + int64_t(ap.sink_rows[size_t(j)]) * nq, nq, qs);
                cpu::rope_apply(qs, hp.n_head, hd, n_rot, st.sink_cos.data() + j * n_pairs, st.sink_sin.data() + j * n_pairs, hp.rope);
            }
            if (kv.kivi()) kivi_attention(sink_ab, st.kivi_sink_, kv, il, st.sink_o.data(), st.sink_lse.data(), st.kivi_scratch_, pool);
            else cpu::attention_paged(sink_ab, kv.view(il), st.sink_o.data(), st.sink_lse.data(), pool);
            for (int64_t j = 0; j < n_sink; ++j) {
                const int64_t r = ap.sink_rows[size_t(j)];
                cpu::attention_merge(st.attn + r * nq, st.lse + r * hp.n_head, st.sink_o.data() + j * nq,
                                     st.sink_lse.data() + j * hp.n_head, hp.n_head, hd);
            }
        }
        dump("kqv_out", il, st.attn, n, nq);
        cpu::matmul(L.wo, st.attn, n, st.xb2, pool);
        dump("attn_out", il, st.xb2, n, d);
        // Residual add fused with the feed-forward norm.
        for (int64_t i = 0; i < n; ++i)
            cpu::add_rmsnorm(st.x + i * d, st.xb2 + i * d, L.ffn_norm, st.xb + i * d, d, hp.rms_eps);
        dump("ffn_inp", il, st.x, n, d);

        // Feed-forward block (SwiGLU).
        dump("ffn_norm", il, st.xb, n, d);
        const float* next_norm = il + 1 < l_end ? w_.layers[size_t(il + 1)].attn_norm : nullptr;
        llama_ffn_residual(L, next_norm, hp.rms_eps, n, st.x, st.xb, st.gate, st.ffn_out, pool, hook, il);
        dump("l_out", il, st.x, n, d);
    }

    // KIVI: the aged-out pages are packed in every layer now; their twins take their place.
    for (int32_t s : kivi_seqs) kv.kivi_commit(s);
    // H2O: every (layer, KV head) of each H2O sequence cuts back to its budget.
    for (size_t e = 0; e < ap.h2o_seqs.size(); ++e) KVS_TRY(h2o_cut_back(kv, ap.h2o_seqs[e], ap.h2o_filled[e]));

    if (span.hidden_out) std::copy_n(st.x, size_t(n * d), span.hidden_out);

    // LM head on the rows that want logits only.
    int64_t r = 0;
    for (int64_t i = 0; i < n; ++i)
        if (b.want_logits[size_t(i)]) {
            cpu::rmsnorm(st.x + i * d, w_.output_norm, st.out_rows + r * d, d, hp.rms_eps);
            ++r;
        }
    if (n_out > 0) {
        dump("result_norm", -1, st.out_rows, n_out, d);
        cpu::matmul(w_.output, st.out_rows, n_out, st.logits_, pool);
        dump("result_output", -1, st.logits_, n_out, hp.n_vocab);
    }
    return status::ok();
}

}  // namespace kvs
