// Loading and validating a deepseek2 GGUF (deepseek2.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "model/deepseek2.h"
#include "kernels/cpu/interleave.h"
#include "model/load_tuning.h"
#include "model/tensor_check.h"

namespace kvs {

result<std::unique_ptr<deepseek2_model>> deepseek2_model::from_gguf(std::unique_ptr<gguf_file> file, const load_options& opts) {
    std::unique_ptr<deepseek2_model> m(new deepseek2_model());
    m->file_ = std::move(file);
    auto hp = model_hparams::from_gguf(*m->file_);
    if (!hp) return hp.error();
    if (!hp.value().deepseek2()) return status::error("not a deepseek2 model (architecture '" + hp.value().arch + "')");
    m->hp_ = hp.value();
    if (m->hp_.rope_yarn)
        m->yarn_ = yarn_rope::make(m->hp_.n_rot, m->hp_.rope_freq_base, m->hp_.rope_freq_scale, m->hp_.yarn_orig_ctx);
    KVS_TRY(m->bind_weights());
    deepseek2_model* const dm = m.get();
    tune_matmuls_at_load(opts, [dm] { return dm->tune_workload(); }, [dm](weight_repack r) { dm->repack_weights(r); });
    m->prefill_form_ = opts.prefill_form;
    return m;
}

cpu::tune_workload deepseek2_model::tune_workload() const {
    cpu::tune_workload calls;
    using kind = cpu::tune_call::kind;
    const int64_t H = hp_.n_head;
    for (const deepseek2_layer& L : w_.layers) {
        // The query path and the latent in one pass over the rows.
        if (hp_.q_lora > 0) {
            calls.push_back({kind::multi, {L.wq_a, L.wkv_a}, false});
            calls.push_back({kind::single, {L.wq_b}, false});
        } else {
            calls.push_back({kind::multi, {L.wq, L.wkv_a}, false});
        }
        // Absorbed attention, per head: W_UK,iᵀ into the query, W_UV,i out of the latent; a
        // prefill chunk lifts its context's latents instead (the un-absorbed form).
        for (int64_t h = 0; h < H; ++h) calls.push_back({kind::single, {L.wk_b_t_head(h)}, false});
        for (int64_t h = 0; h < H; ++h) calls.push_back({kind::single, {L.wv_b_head(h, hp_.v_head)}, false});
        calls.push_back({kind::single, {L.kv_up(H)}, false});
        calls.push_back({kind::single, {L.wo}, false});
        if (L.dense()) {
            calls.push_back({kind::swiglu, {L.w_gate, L.w_up}, false});
            calls.push_back({kind::single, {L.w_down}, false});
            continue;
        }
        const moe_weights& e = L.moe;
        calls.push_back({kind::single, {e.router}, false});
        if (e.has_shared()) {
            calls.push_back({kind::swiglu, {e.gate_sh, e.up_sh}, false});
            calls.push_back({kind::single, {e.down_sh}, false});
        }
        // Each expert sees about k / n_expert of a prompt chunk's rows.
        const int64_t rows = std::max<int64_t>(1, (cpu::tune_m_of[int(cpu::matmul_m_class::large)] * e.n_used + e.n_expert - 1) / e.n_expert);
        for (int64_t x = 0; x < e.n_expert; ++x) {
            calls.push_back({kind::swiglu, {moe_expert(e.gate_exps, x), moe_expert(e.up_exps, x)}, false, rows});
            calls.push_back({kind::single, {moe_expert(e.down_exps, x)}, false, rows});
        }
    }
    calls.push_back({kind::single, {w_.output}, true});
    return calls;
}

void deepseek2_model::repack_weights(weight_repack mode) {
    const int64_t H = hp_.n_head;
    std::vector<repack_item> items;
    auto plain = [&](cpu::weight_view& v) {
        if (v.data) items.push_back({&v, v.n_out});
    };
    for (deepseek2_layer& L : w_.layers) {
        for (cpu::weight_view* v : {&L.wq, &L.wq_a, &L.wq_b, &L.wkv_a, &L.wo, &L.w_gate, &L.w_up, &L.w_down, &L.moe.router,
                                    &L.moe.gate_sh, &L.moe.up_sh, &L.moe.down_sh})
            plain(*v);
        for (cpu::weight_view* v : {&L.moe.gate_exps, &L.moe.up_exps, &L.moe.down_exps})
            if (v->data) items.push_back({v, v->n_out * L.moe.n_expert});
        // W_UK,iᵀ: one head's view over H stacked heads (owned or the file's attn_k_b).
        items.push_back({&L.wk_b_t, L.wk_b_t.n_out * H, !L.owned_wk_b_t.empty()});
        // W_UV,i: rows i·uv_stride + uv_offset + [0, v_head) of wv_b, each head's slice a run of
        // whole 16-row groups when all three are multiples of 16.
        const int64_t g = cpu::interleave_rows;
        if (L.uv_stride % g == 0 && L.uv_offset % g == 0 && hp_.v_head % g == 0) items.push_back({&L.wv_b, L.uv_stride * H});
    }
    items.push_back({&w_.output, w_.output.n_out, hp_.tied_output});
    repacked_.repack(items, mode);
    for (deepseek2_layer& L : w_.layers)
        if (L.wk_b_t.layout == cpu::weight_layout::interleaved16 && !L.owned_wk_b_t.empty()) {
            L.owned_wk_b_t.clear();
            L.owned_wk_b_t.shrink_to_fit();
        }
}

status deepseek2_model::bind_weights() {
    const gguf_file& f = *file_;
    auto ends = bind_lm_ends(f, hp_.n_embd, &hp_.n_vocab);
    if (!ends) return ends.error();
    w_.token_embd = ends.value().token_embd;
    w_.output_norm = ends.value().output_norm;
    w_.output = ends.value().output;
    hp_.tied_output = ends.value().tied;

    const int64_t d = hp_.n_embd, H = hp_.n_head, hd = hp_.head_dim, nope = hp_.qk_nope(), rope = hp_.n_rot;
    const int64_t lora = hp_.kv_lora, vh = hp_.v_head;
    w_.layers.resize(size_t(hp_.n_layer));
    for (int64_t il = 0; il < hp_.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        deepseek2_layer& L = w_.layers[size_t(il)];
        auto get = [&](const char* name, std::vector<int64_t> ne, bool need_float) {
            return want_tensor(f, p + name, std::move(ne), need_float);
        };
        auto norm = [&](const char* name, int64_t n, const float** out) -> status {
            auto t = get(name, {n}, true);
            if (!t) return t.error();
            *out = reinterpret_cast<const float*>(t.value()->data);
            return status::ok();
        };
        auto matrix = [&](const char* name, std::vector<int64_t> ne, cpu::weight_view* out) -> status {
            auto t = get(name, std::move(ne), false);
            if (!t) return t.error();
            if (!cpu::matmul_supported(t.value()->type))
                return status::error("tensor " + p + name + ": no matmul kernel for " + dtype_name(t.value()->type));
            *out = weight_view_of(t.value());
            return status::ok();
        };
        KVS_TRY(norm("attn_norm.weight", d, &L.attn_norm));
        if (hp_.q_lora > 0) {
            if (f.find_tensor(p + "attn_q.weight"))
                return status::error("tensor " + p + "attn_q.weight: attention.q_lora_rank is " + std::to_string(hp_.q_lora) +
                                     ", so the queries come from attn_q_a and attn_q_b");
            KVS_TRY(matrix("attn_q_a.weight", {d, hp_.q_lora}, &L.wq_a));
            KVS_TRY(norm("attn_q_a_norm.weight", hp_.q_lora, &L.q_a_norm));
            KVS_TRY(matrix("attn_q_b.weight", {hp_.q_lora, H * hd}, &L.wq_b));
        } else {
            KVS_TRY(matrix("attn_q.weight", {d, H * hd}, &L.wq));
        }
        KVS_TRY(matrix("attn_kv_a_mqa.weight", {d, lora + rope}, &L.wkv_a));
        KVS_TRY(norm("attn_kv_a_norm.weight", lora, &L.kv_a_norm));
        if (hp_.mla_split) {
            if (f.find_tensor(p + "attn_kv_b.weight"))
                return status::error("tensor " + p + "attn_kv_b.weight: this file's keys (key_length_mla) describe attn_k_b and attn_v_b");
            KVS_TRY(matrix("attn_k_b.weight", {nope, lora, H}, &L.wk_b_t));
            KVS_TRY(matrix("attn_v_b.weight", {lora, vh, H}, &L.wv_b));
            L.uv_stride = vh;
            L.uv_offset = 0;
            // The un-absorbed form's per-head [W_UK,i; W_UV,i] rows: W_UK,i is attn_k_b's head
            // transposed, W_UV,i attn_v_b's head as it is.
            const bool float_src = (L.wk_b_t.type == dtype::f32 || L.wk_b_t.type == dtype::f16 || L.wk_b_t.type == dtype::bf16) &&
                                   (L.wv_b.type == dtype::f32 || L.wv_b.type == dtype::f16 || L.wv_b.type == dtype::bf16);
            const dtype t = float_src || lora % 32 ? dtype::f32 : dtype::q8_0;
            const size_t t_row = dtype_row_bytes(t, lora);
            L.owned_kv_up.assign(size_t(H * (nope + vh)) * t_row, 0);
            std::vector<float> kb(static_cast<size_t>(lora * nope)), row(static_cast<size_t>(lora));  // one head's W_UK,iᵀ (lora, nope)
            const size_t kb_row = dtype_row_bytes(L.wk_b_t.type, nope), vb_row = dtype_row_bytes(L.wv_b.type, lora);
            for (int64_t i = 0; i < H; ++i) {
                for (int64_t c = 0; c < lora; ++c)
                    dequantize_row(L.wk_b_t.type, static_cast<const uint8_t*>(L.wk_b_t.data) + size_t(i * lora + c) * kb_row,
                                   kb.data() + c * nope, nope);
                for (int64_t r = 0; r < nope + vh; ++r) {
                    if (r < nope) {
                        for (int64_t c = 0; c < lora; ++c) row[size_t(c)] = kb[size_t(c * nope + r)];
                    } else {
                        dequantize_row(L.wv_b.type, static_cast<const uint8_t*>(L.wv_b.data) + size_t(i * vh + r - nope) * vb_row, row.data(), lora);
                    }
                    uint8_t* dst = L.owned_kv_up.data() + size_t(i * (nope + vh) + r) * t_row;
                    if (t == dtype::f32) std::memcpy(dst, row.data(), t_row);
                    else quantize_row(t, row.data(), dst, lora);
                }
            }
            L.owned_kv_up_view = cpu::weight_view{};
            L.owned_kv_up_view.data = L.owned_kv_up.data();
            L.owned_kv_up_view.type = t;
            L.owned_kv_up_view.n_out = H * (nope + vh);
            L.owned_kv_up_view.n_in = lora;
        } else {
            KVS_TRY(matrix("attn_kv_b.weight", {lora, H * (nope + vh)}, &L.wv_b));
            L.uv_stride = nope + vh;
            L.uv_offset = nope;
        }
        KVS_TRY(matrix("attn_output.weight", {H * vh, d}, &L.wo));
        KVS_TRY(norm("ffn_norm.weight", d, &L.ffn_norm));
        if (il < hp_.n_layer_dense_lead) {
            KVS_TRY(matrix("ffn_gate.weight", {d, hp_.n_ff}, &L.w_gate));
            KVS_TRY(matrix("ffn_up.weight", {d, hp_.n_ff}, &L.w_up));
            KVS_TRY(matrix("ffn_down.weight", {hp_.n_ff, d}, &L.w_down));
        } else {
            moe_weights& mw = L.moe;
            const int64_t ne = hp_.n_expert, ffe = hp_.n_ff_exp;
            KVS_TRY(matrix("ffn_gate_inp.weight", {d, ne}, &mw.router));
            KVS_TRY(matrix("ffn_gate_exps.weight", {d, ffe, ne}, &mw.gate_exps));
            KVS_TRY(matrix("ffn_up_exps.weight", {d, ffe, ne}, &mw.up_exps));
            KVS_TRY(matrix("ffn_down_exps.weight", {ffe, d, ne}, &mw.down_exps));
            if (mw.up_exps.type != mw.gate_exps.type)
                return status::error("tensor " + p + "ffn_up_exps.weight: its type " + dtype_name(mw.up_exps.type) +
                                     " differs from ffn_gate_exps.weight's " + dtype_name(mw.gate_exps.type));
            if (hp_.n_expert_shared > 0) {
                const int64_t ffs = ffe * hp_.n_expert_shared;
                KVS_TRY(matrix("ffn_gate_shexp.weight", {d, ffs}, &mw.gate_sh));
                KVS_TRY(matrix("ffn_up_shexp.weight", {d, ffs}, &mw.up_sh));
                KVS_TRY(matrix("ffn_down_shexp.weight", {ffs, d}, &mw.down_sh));
            } else if (f.find_tensor(p + "ffn_gate_shexp.weight")) {
                return status::error("tensor " + p + "ffn_gate_shexp.weight: expert_shared_count is 0");
            }
            mw.n_expert = ne;
            mw.n_used = hp_.n_expert_used;
            mw.scale = hp_.expert_weights_scale;
            mw.norm_topk = hp_.expert_weights_norm;
            if (std::string why = moe_check(mw); !why.empty()) return status::error("layer " + std::to_string(il) + " MoE: " + why);
        }
        if (!hp_.mla_split) {
            // W_UK,iᵀ of every head, for the absorbed queries: kv_b's rows i·(nope + v) + [0, nope),
            // transposed; kept in q8_0 when kv_b itself is quantized (and its rows fit q8_0 blocks).
            const cpu::weight_view& kv_b = L.wv_b;
            std::vector<float> wt(static_cast<size_t>(H * lora * nope));  // (H, kv_lora, nope)
            std::vector<float> row(static_cast<size_t>(lora));
            const size_t row_bytes = dtype_row_bytes(kv_b.type, lora);
            const auto* base = static_cast<const uint8_t*>(kv_b.data);
            for (int64_t i = 0; i < H; ++i)
                for (int64_t r = 0; r < nope; ++r) {
                    dequantize_row(kv_b.type, base + size_t(i * (nope + vh) + r) * row_bytes, row.data(), lora);
                    float* dst = wt.data() + i * lora * nope;
                    for (int64_t c = 0; c < lora; ++c) dst[c * nope + r] = row[size_t(c)];
                }
            const bool float_kv_b = kv_b.type == dtype::f32 || kv_b.type == dtype::f16 || kv_b.type == dtype::bf16;
            const dtype t = !float_kv_b && nope % 32 == 0 ? dtype::q8_0 : dtype::f32;
            const size_t t_row = dtype_row_bytes(t, nope);
            L.owned_wk_b_t.assign(size_t(H * lora) * t_row, 0);
            for (int64_t r = 0; r < H * lora; ++r) {
                if (t == dtype::f32) std::memcpy(L.owned_wk_b_t.data() + size_t(r) * t_row, wt.data() + r * nope, t_row);
                else quantize_row(t, wt.data() + r * nope, L.owned_wk_b_t.data() + size_t(r) * t_row, nope);
            }
            L.wk_b_t.data = L.owned_wk_b_t.data();
            L.wk_b_t.type = t;
            L.wk_b_t.n_out = lora;
            L.wk_b_t.n_in = nope;
        }
    }
    if (!cpu::matmul_supported(w_.output.type)) return status::error(std::string("output head: no matmul kernel for ") + dtype_name(w_.output.type));
    return status::ok();
}

kv_config deepseek2_model::kv_geometry(int32_t page_size, int32_t n_pages, dtype type) const {
    kv_config c;
    c.type = type;
    c.n_layer = hp_.n_layer;
    c.n_kv_head = 1;
    c.head_dim = hp_.kv_lora + hp_.n_rot;
    c.keys_only = true;
    c.page_size = page_size;
    c.n_pages = n_pages;
    return c;
}

std::vector<kv_group_desc> deepseek2_model::kv_group_layout(int32_t page_size, dtype type) const {
    return {{"latent", kv_geometry(page_size, 0, type), 0}};
}

dtype deepseek2_model::auto_kv_type() const {
    return auto_kv_type_for(w_.layers.empty() ? dtype::f32 : w_.layers[0].wkv_a.type);
}

size_t deepseek2_model::weight_bytes() const {
    size_t n = 0;
    for (auto& t : file_->tensors()) n += t.n_bytes;
    return n;
}

size_t deepseek2_model::decode_weight_bytes() const {
    size_t n = 0;
    for (auto& t : file_->tensors()) {
        const bool routed = t.name.find("_exps.weight") != std::string_view::npos;
        n += routed ? size_t(double(t.n_bytes) * double(hp_.n_expert_used) / double(std::max<int64_t>(1, hp_.n_expert))) : t.n_bytes;
    }
    return n;
}

std::vector<cpu::weight_view> deepseek2_model::matmul_weights() const {
    std::vector<cpu::weight_view> out;
    for (const deepseek2_layer& L : w_.layers) {
        for (const cpu::weight_view* v : {&L.wq, &L.wq_a, &L.wq_b, &L.wkv_a, &L.wk_b_t, &L.wv_b, &L.wo, &L.w_gate, &L.w_up, &L.w_down,
                                          &L.moe.router, &L.moe.gate_exps, &L.moe.up_exps, &L.moe.down_exps, &L.moe.gate_sh,
                                          &L.moe.up_sh, &L.moe.down_sh})
            if (v->data) out.push_back(*v);
    }
    out.push_back(w_.output);
    return out;
}

void deepseek2_model::final_norm(const float* x, float* y) const { cpu::rmsnorm(x, w_.output_norm, y, hp_.n_embd, hp_.rms_eps); }

float deepseek2_model::attention_scale() const {
    const float mscale = hp_.rope_yarn ? 1.0f + hp_.yarn_log_mul * std::log(1.0f / hp_.rope_freq_scale) : 1.0f;
    return mscale * mscale / std::sqrt(float(hp_.head_dim));
}

}  // namespace kvs
