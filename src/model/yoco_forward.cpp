// The YOCO forward pass (Sun et al., 2024; docs/yoco.md) over a ragged batch and the model's
// two KV groups (kv_group_layout): group 0 "global" (one layer of K/V, growing), group 1 "self"
// (the self-decoder's layers, a ring of W tokens).
//
//   x = embed(tokens)
//   layers [0, Ls): Llama layers whose attention reads the row's window [slot - W + 1, slot]
//       of its own K/V in the self group
//   k^, v^ = rmsnorm(x, global_norm) · (global_k, global_v), k^ rotated at the row's position,
//       written into the global group for every row
//   layers [Ls, L): only the rows whose logits are asked for (compacted to the front): q from
//       the layer's Wq, causal attention over the global K/V [0, slot], Wo, the FFN
//   logits of those rows
//
// Prefill thus skips the cross-decoder for every prompt token but the last: no later token
// reads anything the cross-decoder computes.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention.h"
#include "model/llama.h"

namespace kvs {

status llama_model::forward_yoco(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook) const {
    const model_hparams& hp = hp_;
    const int64_t n = b.size();
    const int64_t d = hp.n_embd, hd = hp.head_dim, nq = hp.n_head * hd, nkv = hp.n_head_kv * hd;
    const int64_t n_self = hp.n_layer_self;
    kv_cache& global = kv.group(0);
    kv_cache& self = kv.group(1);

    // Validate the whole batch before touching any state.
    if (n == 0) return status::ok();
    if (b.positions.size() != size_t(n) || b.seq_ids.size() != size_t(n) || b.slots.size() != size_t(n) ||
        b.want_logits.size() != size_t(n))
        return status::error("batch: tokens, positions, seq_ids, slots and want_logits differ in length");
    if (n > st.max_tokens()) return status::error(strfmt("batch of %lld tokens exceeds the forward state's %lld", (long long)n, (long long)st.max_tokens()));
    if (b.n_logits() > st.max_logits())
        return status::error(strfmt("batch asks for %lld logit rows, more than the forward state's %lld", (long long)b.n_logits(), (long long)st.max_logits()));
    if (global.config().n_layer != 1 || self.config().n_layer != n_self || kv.desc(1).window != hp.sliding_window)
        return status::error("KV groups: not this yoco model's (global: 1 layer; self: the self-decoder's layers, its window)");
    for (int64_t i = 0; i < n; ++i) {
        if (b.tokens[size_t(i)] < 0 || b.tokens[size_t(i)] >= hp.n_vocab)
            return status::error(strfmt("batch row %lld: token id %d is outside the vocabulary (0..%lld)", (long long)i, b.tokens[size_t(i)], (long long)hp.n_vocab - 1));
        const int32_t s = b.seq_ids[size_t(i)], slot = b.slots[size_t(i)];
        if (!global.seq_exists(s) || !self.seq_exists(s)) return status::error(strfmt("batch row %lld: sequence %d does not exist", (long long)i, s));
        if (!global.seq_policy(s).is_dense())
            return status::error("a yoco model runs the dense policy only (its self-decoder's sliding window is the model's own)");
        if (!global.seq_holds(s, slot) || !self.seq_holds(s, slot))
            return status::error(strfmt("batch row %lld: slot %d of sequence %d is not reserved", (long long)i, slot, s));
        if (b.positions[size_t(i)] < 0) return status::error(strfmt("batch row %lld: negative position", (long long)i));
    }
    for (int64_t i = 0; i < n; ++i) {
        const int32_t slot = b.slots[size_t(i)];
        if (!kv.seq_prepare_write(b.seq_ids[size_t(i)], slot, int64_t(slot) + 1)) return status::error("kv cache: no free page for copy-on-write");
    }

    // The self-decoder's rows read their windows of the self group.
    attention_plan& ap = st.plan_;
    KVS_TRY(plan_attention(n, b.seq_ids.data(), b.slots.data(), self, ap));
    st.cascade_ = st.cascade_on_ && n > 1 ? plan_cascade(n, ap.q_seq.data(), ap.q_kv_len.data(), ap.page_indptr.data(), ap.page_ids.data(),
                                                         self.config().page_size, {}, ap.any_begin ? ap.q_kv_begin.data() : nullptr)
                                          : cascade_plan{};
    // The cross-decoder's rows: those whose logits are asked for.
    st.cross_seq_.clear();
    st.cross_slot_.clear();
    st.cross_row_.clear();
    for (int64_t i = 0; i < n; ++i)
        if (b.want_logits[size_t(i)]) {
            st.cross_seq_.push_back(b.seq_ids[size_t(i)]);
            st.cross_slot_.push_back(b.slots[size_t(i)]);
            st.cross_row_.push_back(int32_t(i));
        }
    const int64_t r = int64_t(st.cross_row_.size());

    auto dump = [&](const char* name, int64_t layer, const float* data, int64_t rows, int64_t cols) {
        if (hook) hook(name, layer, data, rows, cols);
    };

    const size_t emb_row = dtype_row_bytes(w_.token_embd->type, d);
    for (int64_t i = 0; i < n; ++i)
        dequantize_row(w_.token_embd->type, w_.token_embd->data + size_t(b.tokens[size_t(i)]) * emb_row, st.x + i * d, d);
    const int64_t n_rot = std::min(hp.n_rot, hd), n_pairs = std::max<int64_t>(1, n_rot / 2);
    for (int64_t i = 0; i < n; ++i)
        cpu::rope_angles(n_rot, b.positions[size_t(i)], hp.rope_freq_base, hp.rope_freq_scale, st.rope_cos + i * n_pairs,
                         st.rope_sin + i * n_pairs);

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

    // The FFN block and the residual add fused with the next norm (`next_norm`, over `rows`).
    auto ffn = [&](const llama_layer& L, int64_t il, int64_t rows, const float* next_norm) {
        for (int64_t i = 0; i < rows; ++i) cpu::add_rmsnorm(st.x + i * d, st.xb2 + i * d, L.ffn_norm, st.xb + i * d, d, hp.rms_eps);
        dump("ffn_inp", il, st.x, rows, d);
        dump("ffn_norm", il, st.xb, rows, d);
        llama_ffn_residual(L, next_norm, hp.rms_eps, rows, st.x, st.xb, st.gate, st.ffn_out, pool, hook, il);
        dump("l_out", il, st.x, rows, d);
    };

    // Self-decoder: Llama layers over their windows.
    for (int64_t i = 0; i < n; ++i) cpu::rmsnorm(st.x + i * d, w_.layers[0].attn_norm, st.xb + i * d, d, hp.rms_eps);
    for (int64_t il = 0; il < n_self; ++il) {
        const llama_layer& L = w_.layers[size_t(il)];
        dump("attn_norm", il, st.xb, n, d);
        const cpu::weight_view wqkv[3] = {L.wq, L.wk, L.wv};
        float* const yqkv[3] = {st.q, st.k, st.v};
        cpu::matmul_multi(wqkv, 3, st.xb, n, yqkv, pool);
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
            self.write(il, b.seq_ids[size_t(i)], b.slots[size_t(i)], st.k + i * nkv, st.v + i * nkv, b.positions[size_t(i)]);
        attention_with_cascade(ab, self.view(il), st.cascade_, st.attn, st.lse, st.cascade_scratch_, pool);
        dump("kqv_out", il, st.attn, n, nq);
        cpu::matmul(L.wo, st.attn, n, st.xb2, pool);
        dump("attn_out", il, st.xb2, n, d);
        // The last self-decoder layer hands over to the global K/V's norm.
        ffn(L, il, n, il + 1 < n_self ? w_.layers[size_t(il + 1)].attn_norm : w_.global_norm);
    }

    // The global K/V: once per token, for every row (later tokens read them all).
    dump("global_norm", -1, st.xb, n, d);
    {
        const cpu::weight_view wkv[2] = {w_.global_k, w_.global_v};
        float* const ykv[2] = {st.k, st.v};
        cpu::matmul_multi(wkv, 2, st.xb, n, ykv, pool);
    }
    for (int64_t i = 0; i < n; ++i)
        cpu::rope_apply(st.k + i * nkv, hp.n_head_kv, hd, n_rot, st.rope_cos + i * n_pairs, st.rope_sin + i * n_pairs, hp.rope);
    dump("global_k", -1, st.k, n, nkv);
    dump("global_v", -1, st.v, n, nkv);
    for (int64_t i = 0; i < n; ++i)
        global.write(0, b.seq_ids[size_t(i)], b.slots[size_t(i)], st.k + i * nkv, st.v + i * nkv, b.positions[size_t(i)]);
    if (r == 0) return status::ok();

    // Cross-decoder over the logit rows, moved to the front (row j <= its batch row: in place).
    for (int64_t j = 0; j < r; ++j) {
        const int64_t i = st.cross_row_[size_t(j)];
        if (i == j) continue;
        std::copy_n(st.x + i * d, d, st.x + j * d);
        std::copy_n(st.rope_cos + i * n_pairs, n_pairs, st.rope_cos + j * n_pairs);
        std::copy_n(st.rope_sin + i * n_pairs, n_pairs, st.rope_sin + j * n_pairs);
    }
    attention_plan& gp = st.plan_global_;
    KVS_TRY(plan_attention(r, st.cross_seq_.data(), st.cross_slot_.data(), global, gp));
    st.cascade_global_ = st.cascade_on_ && r > 1 ? plan_cascade(r, gp.q_seq.data(), gp.q_kv_len.data(), gp.page_indptr.data(),
                                                                gp.page_ids.data(), global.config().page_size, {}, nullptr)
                                                 : cascade_plan{};
    cpu::attention_batch cb = ab;
    cb.n_q = r;
    cb.q_seq = gp.q_seq.data();
    cb.q_kv_len = gp.q_kv_len.data();
    cb.q_kv_begin = nullptr;
    cb.page_indptr = gp.page_indptr.data();
    cb.page_ids = gp.page_ids.data();
    const cpu::paged_kv_view global_view = global.view(0);
    for (int64_t i = 0; i < r; ++i) cpu::rmsnorm(st.x + i * d, w_.layers[size_t(n_self)].attn_norm, st.xb + i * d, d, hp.rms_eps);
    for (int64_t il = n_self; il < hp.n_layer; ++il) {
        const llama_layer& L = w_.layers[size_t(il)];
        dump("attn_norm", il, st.xb, r, d);
        cpu::matmul(L.wq, st.xb, r, st.q, pool);
        for (int64_t i = 0; i < r; ++i)
            cpu::rope_apply(st.q + i * nq, hp.n_head, hd, n_rot, st.rope_cos + i * n_pairs, st.rope_sin + i * n_pairs, hp.rope);
        dump("Qcur", il, st.q, r, nq);
        attention_with_cascade(cb, global_view, st.cascade_global_, st.attn, st.lse, st.cascade_scratch_, pool);
        dump("kqv_out", il, st.attn, r, nq);
        cpu::matmul(L.wo, st.attn, r, st.xb2, pool);
        dump("attn_out", il, st.xb2, r, d);
        ffn(L, il, r, il + 1 < hp.n_layer ? w_.layers[size_t(il + 1)].attn_norm : nullptr);
    }

    for (int64_t i = 0; i < r; ++i) cpu::rmsnorm(st.x + i * d, w_.output_norm, st.out_rows + i * d, d, hp.rms_eps);
    dump("result_norm", -1, st.out_rows, r, d);
    cpu::matmul(w_.output, st.out_rows, r, st.logits_, pool);
    dump("result_output", -1, st.logits_, r, hp.n_vocab);
    return status::ok();
}

}  // namespace kvs
