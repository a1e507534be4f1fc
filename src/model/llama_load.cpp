// Loading and validating the weights of a Llama-family GGUF.
#include "model/llama.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "kernels/cpu/autotune.h"
#include "kernels/cpu/interleave.h"
#include "model/load_tuning.h"
#include "model/tensor_check.h"

namespace kvs {

namespace {

// The matmul calls of one forward pass (llama.cpp's forward): per layer Q/K/V in one
// matmul_multi, the output projection, gate/up in one matmul_swiglu, the down projection (both
// over llama_ffn_row_block rows at most); then the LM head.
cpu::tune_workload workload_of(const llama_weights& w) {
    cpu::tune_workload calls;
    using kind = cpu::tune_call::kind;
    for (const llama_layer& L : w.layers) {
        // YOCO's cross-decoder layers project queries only (their K/V views hold no data).
        if (L.wk.data) calls.push_back({kind::multi, {L.wq, L.wk, L.wv}, false});
        else calls.push_back({kind::single, {L.wq}, false});
        calls.push_back({kind::single, {L.wo}, false});
        calls.push_back({kind::swiglu, {L.w_gate, L.w_up}, false, llama_ffn_row_block});
        calls.push_back({kind::single, {L.w_down}, false, llama_ffn_row_block});
    }
    if (w.global_k.data) calls.push_back({kind::multi, {w.global_k, w.global_v}, false});  // YOCO: once per token
    calls.push_back({kind::single, {w.output}, true});
    return calls;
}

}  // namespace

result<std::unique_ptr<llama_model>> llama_model::load(const std::string& path, const load_options& opts) {
    auto f = gguf_file::open(path);
    if (!f) return f.error();
    auto m = from_gguf(std::move(f.value()), opts);
    if (!m) return m.error().with_context(path);
    return m;
}

result<std::unique_ptr<llama_model>> llama_model::from_gguf(std::unique_ptr<gguf_file> file,
                                                             const load_options& opts) {
    std::unique_ptr<llama_model> m(new llama_model());
    m->file_ = std::move(file);
    auto hp = model_hparams::from_gguf(*m->file_);
    if (!hp) return hp.error();
    if (hp.value().deepseek2()) return status::error("deepseek2 is not a Llama-family architecture (language_model::load loads it)");
    m->hp_ = hp.value();
    KVS_TRY(m->bind_weights());
    llama_model* const lm = m.get();
    tune_matmuls_at_load(opts, [lm] { return workload_of(lm->w_); }, [lm](weight_repack r) { lm->repack_weights(r); });
    return m;
}

void llama_model::repack_weights(weight_repack mode) {
    std::vector<repack_item> items;
    for (llama_layer& L : w_.layers)
        for (cpu::weight_view* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
            if (v->data) items.push_back({v, v->n_out});  // YOCO's cross-decoder layers have no wk, wv
    if (w_.global_k.data) {
        items.push_back({&w_.global_k, w_.global_k.n_out});
        items.push_back({&w_.global_v, w_.global_v.n_out});
    }
    // Tied: the LM head's rows are the token embeddings, still read by the lookup.
    items.push_back({&w_.output, w_.output.n_out, hp_.tied_output});
    repacked_.repack(items, mode);
}

status llama_model::bind_weights() {
    const gguf_file& f = *file_;
    auto ends = bind_lm_ends(f, hp_.n_embd, &hp_.n_vocab);
    if (!ends) return ends.error();
    w_.token_embd = ends.value().token_embd;
    w_.output_norm = ends.value().output_norm;
    w_.output = ends.value().output;
    hp_.tied_output = ends.value().tied;

    const int64_t d = hp_.n_embd, hd = hp_.head_dim, nq = hp_.n_head * hd, nkv = hp_.n_head_kv * hd, ff = hp_.n_ff;
    w_.layers.resize(size_t(hp_.n_layer));
    for (int64_t il = 0; il < hp_.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        llama_layer& L = w_.layers[size_t(il)];
        auto get = [&](const char* name, std::vector<int64_t> ne, bool need_float) {
            return want_tensor(f, p + name, std::move(ne), need_float);
        };
        // YOCO's cross-decoder layers (il >= n_layer_self) attend to the global K/V: no K/V
        // projections of their own, and a file that has them is malformed.
        const bool own_kv = !hp_.yoco() || il < hp_.n_layer_self;
        if (!own_kv)
            for (const char* name : {"attn_k.weight", "attn_v.weight", "attn_k.bias", "attn_v.bias"})
                if (f.find_tensor(p + name))
                    return status::error("tensor " + p + name + ": cross-decoder layers have no K/V projections");
        auto an = get("attn_norm.weight", {d}, true);
        auto q = get("attn_q.weight", {d, nq}, false);
        auto k = own_kv ? get("attn_k.weight", {d, nkv}, false) : result<const gguf_tensor_info*>(nullptr);
        auto v = own_kv ? get("attn_v.weight", {d, nkv}, false) : result<const gguf_tensor_info*>(nullptr);
        auto o = get("attn_output.weight", {nq, d}, false);
        auto fn = get("ffn_norm.weight", {d}, true);
        auto g = get("ffn_gate.weight", {d, ff}, false);
        auto u = get("ffn_up.weight", {d, ff}, false);
        auto dn = get("ffn_down.weight", {ff, d}, false);
        for (auto* r : {&an, &q, &k, &v, &o, &fn, &g, &u, &dn})
            if (!*r) return r->error();
        L.attn_norm = reinterpret_cast<const float*>(an.value()->data);
        L.ffn_norm = reinterpret_cast<const float*>(fn.value()->data);
        L.wq = weight_view_of(q.value());
        if (own_kv) {
            L.wk = weight_view_of(k.value());
            L.wv = weight_view_of(v.value());
        }
        L.wo = weight_view_of(o.value());
        L.w_gate = weight_view_of(g.value());
        L.w_up = weight_view_of(u.value());
        L.w_down = weight_view_of(dn.value());
        if (hp_.qkv_bias) {
            auto bq = get("attn_q.bias", {nq}, true);
            auto bk = get("attn_k.bias", {nkv}, true);
            auto bv = get("attn_v.bias", {nkv}, true);
            for (auto* r : {&bq, &bk, &bv})
                if (!*r) return r->error();
            L.bq = reinterpret_cast<const float*>(bq.value()->data);
            L.bk = reinterpret_cast<const float*>(bk.value()->data);
            L.bv = reinterpret_cast<const float*>(bv.value()->data);
        }
    }
    if (hp_.yoco()) {
        auto gn = want_tensor(f, "global_norm.weight", {d}, true);
        if (!gn) return gn.error();
        auto gk = want_tensor(f, "global_k.weight", {d, nkv}, false);
        if (!gk) return gk.error();
        auto gv = want_tensor(f, "global_v.weight", {d, nkv}, false);
        if (!gv) return gv.error();
        w_.global_norm = reinterpret_cast<const float*>(gn.value()->data);
        w_.global_k = weight_view_of(gk.value());
        w_.global_v = weight_view_of(gv.value());
    }
    return status::ok();
}

// Measured (docs/design.md): on Zen 4 (AVX-512 BF16, no FP16) bf16 decodes faster than f16,
// both products running on vdpbf16ps; on Xeons with AVX512-FP16 f16 is faster (pp512 and tg32
// at depth 4,096: ~1.15x) and keeps 3 more mantissa bits. Without AVX-512 both are widened to
// float32 at the same cost, so the more precise f16.
dtype quantized_weights_kv_type() {
    if (cpu::isa_active() == cpu::isa::avx512 && !cpu::cpu_has_avx512_fp16()) return dtype::bf16;
    return dtype::f16;
}

dtype auto_kv_type_for(dtype weight_type) {
    switch (weight_type) {
        case dtype::f32:
        case dtype::f16:
        case dtype::bf16: return weight_type;
        default: return quantized_weights_kv_type();
    }
}

dtype llama_model::auto_kv_type() const {
    // The attention projections decide (the layers' other matrices share their type in every
    // common file; token embeddings and the output head often differ).
    return auto_kv_type_for(w_.layers.empty() ? dtype::f32 : w_.layers[0].wq.type);
}

kv_config llama_model::kv_geometry(int32_t page_size, int32_t n_pages, dtype type) const {
    kv_config c;
    c.type = type;
    c.n_layer = hp_.n_layer;
    c.n_kv_head = hp_.n_head_kv;
    c.head_dim = hp_.head_dim;
    c.page_size = page_size;
    c.n_pages = n_pages;
    return c;
}

std::vector<kv_group_desc> llama_model::kv_group_layout(int32_t page_size, dtype type) const {
    kv_config c = kv_geometry(page_size, 0, type);
    if (!hp_.yoco()) return {{"all", c, 0}};
    kv_config global = c, self = c;
    global.n_layer = 1;
    self.n_layer = hp_.n_layer_self;
    return {{"global", global, 0}, {"self", self, hp_.sliding_window}};
}

std::vector<cpu::weight_view> llama_model::matmul_weights() const {
    std::vector<cpu::weight_view> out;
    for (const llama_layer& L : w_.layers)
        for (const cpu::weight_view* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
            if (v->data) out.push_back(*v);
    for (const cpu::weight_view* v : {&w_.global_k, &w_.global_v, &w_.output})
        if (v->data) out.push_back(*v);
    return out;
}

size_t llama_model::weight_bytes() const {
    size_t n = 0;
    for (auto& t : file_->tensors()) n += t.n_bytes;
    return n;
}

}  // namespace kvs
