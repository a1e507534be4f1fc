#include "model/hparams.h"

#include <cmath>

namespace kvs {

bool llama_family_arch(const std::string& arch) {
    return arch == "llama" || arch == "qwen2" || arch == "mistral" || arch == "yoco";
}

result<model_hparams> model_hparams::from_gguf(const gguf_file& f) {
    model_hparams hp;
    auto arch = f.get_string("general.architecture");
    if (!arch) return arch.error();
    hp.arch = arch.value();
    const bool ds2 = hp.arch == "deepseek2";
    if (!llama_family_arch(hp.arch) && !ds2)
        return status::error("unsupported model architecture '" + hp.arch + "' (supported: llama, qwen2, mistral, yoco, deepseek2)");
    if (auto n = f.get_string_opt("general.name"); n && n.value()) hp.name = *n.value();
    const std::string a = hp.arch + ".";

    auto need = [&](const std::string& key, int64_t* out, int64_t lo, int64_t hi) -> status {
        auto v = f.get_int(a + key);
        if (!v) return v.error();
        if (v.value() < lo || v.value() > hi)
            return status::error(strfmt("metadata %s%s = %lld is out of range [%lld, %lld]", a.c_str(), key.c_str(),
                                        (long long)v.value(), (long long)lo, (long long)hi));
        *out = v.value();
        return status::ok();
    };
    auto opt = [&](const std::string& key, int64_t* out, int64_t lo, int64_t hi) -> status {
        auto v = f.get_int_opt(a + key);
        if (!v) return v.error();
        if (!v.value()) return status::ok();
        if (*v.value() < lo || *v.value() > hi)
            return status::error(strfmt("metadata %s%s = %lld is out of range [%lld, %lld]", a.c_str(), key.c_str(),
                                        (long long)*v.value(), (long long)lo, (long long)hi));
        *out = *v.value();
        return status::ok();
    };
    constexpr int64_t big = int64_t(1) << 20;
    KVS_TRY(need("embedding_length", &hp.n_embd, 1, big));
    KVS_TRY(need("block_count", &hp.n_layer, 1, 4096));
    KVS_TRY(need("feed_forward_length", &hp.n_ff, 1, big));
    KVS_TRY(need("attention.head_count", &hp.n_head, 1, 4096));
    KVS_TRY(need("context_length", &hp.n_ctx_train, 1, int64_t(1) << 26));
    hp.n_head_kv = hp.n_head;
    KVS_TRY(opt("attention.head_count_kv", &hp.n_head_kv, 1, hp.n_head));
    // deepseek2 files in the split MLA layout describe the latent in the generic keys and the
    // per-head sizes in *_mla keys (read below); validate the generic ones as the latent's.
    const bool ds2_split = ds2 && (f.find(a + "attention.key_length_mla") || f.find(a + "attention.value_length_mla"));
    if (!ds2_split && hp.n_head % hp.n_head_kv != 0)
        return status::error(strfmt("attention.head_count %lld is not a multiple of head_count_kv %lld",
                                    (long long)hp.n_head, (long long)hp.n_head_kv));
    if (hp.n_embd % hp.n_head != 0 && !f.find(a + "attention.key_length"))
        return status::error(strfmt("embedding_length %lld is not a multiple of head_count %lld",
                                    (long long)hp.n_embd, (long long)hp.n_head));
    hp.head_dim = hp.n_embd / hp.n_head;
    KVS_TRY(opt("attention.key_length", &hp.head_dim, 1, 1024));
    int64_t v_len = hp.head_dim;
    KVS_TRY(opt("attention.value_length", &v_len, 1, 1024));
    if (v_len != hp.head_dim && !ds2) return status::error("attention.value_length different from key_length is not supported");
    if (hp.head_dim % 2 != 0) return status::error(strfmt("head size %lld must be even for RoPE", (long long)hp.head_dim));
    hp.n_rot = hp.head_dim;
    KVS_TRY(opt("rope.dimension_count", &hp.n_rot, 2, hp.head_dim));
    if (hp.n_rot % 2 != 0) return status::error(strfmt("rope.dimension_count %lld must be even", (long long)hp.n_rot));
    hp.n_vocab = 0;
    KVS_TRY(opt("vocab_size", &hp.n_vocab, 1, int64_t(1) << 24));

    auto eps = f.get_float_opt(a + "attention.layer_norm_rms_epsilon");
    if (!eps) return eps.error();
    if (eps.value()) hp.rms_eps = float(*eps.value());
    if (!(hp.rms_eps > 0 && hp.rms_eps < 1)) return status::error(strfmt("layer_norm_rms_epsilon %g is out of range", hp.rms_eps));
    auto base = f.get_float_opt(a + "rope.freq_base");
    if (!base) return base.error();
    if (base.value()) hp.rope_freq_base = float(*base.value());
    if (!(hp.rope_freq_base > 1) || !std::isfinite(hp.rope_freq_base))
        return status::error(strfmt("rope.freq_base %g must be finite and > 1", hp.rope_freq_base));
    auto stype = f.get_string_opt(a + "rope.scaling.type");
    if (!stype) return stype.error();
    auto factor = f.get_float_opt(a + "rope.scaling.factor");
    if (!factor) return factor.error();
    hp.rope_yarn = ds2 && stype.value() && *stype.value() == "yarn";
    if (stype.value() && *stype.value() != "none" && *stype.value() != "linear" && !hp.rope_yarn)
        return status::error("rope.scaling.type '" + *stype.value() + "' is not supported (none, linear" +
                             (ds2 ? ", yarn)" : ")"));
    if (hp.rope_yarn) {
        if (!factor.value() || !(*factor.value() >= 1 && *factor.value() <= 1e6))
            return status::error(a + "rope.scaling.factor must be in [1, 1e6] with YaRN scaling");
        hp.rope_freq_scale = float(1.0 / *factor.value());
        hp.yarn_orig_ctx = hp.n_ctx_train;
        KVS_TRY(opt("rope.scaling.original_context_length", &hp.yarn_orig_ctx, 1, int64_t(1) << 26));
        auto mul = f.get_float_opt(a + "rope.scaling.yarn_log_multiplier");
        if (!mul) return mul.error();
        if (mul.value()) hp.yarn_log_mul = float(*mul.value());
        if (!(hp.yarn_log_mul >= 0 && hp.yarn_log_mul <= 10))
            return status::error(strfmt("%srope.scaling.yarn_log_multiplier %g is out of range [0, 10]", a.c_str(), hp.yarn_log_mul));
    }
    if ((!stype.value() || *stype.value() == "linear") && factor.value() && *factor.value() > 0)
        hp.rope_freq_scale = float(1.0 / *factor.value());
    auto lin = f.get_float_opt(a + "rope.scale_linear");
    if (!lin) return lin.error();
    if (lin.value() && *lin.value() > 0) hp.rope_freq_scale = float(1.0 / *lin.value());
    // A scaling factor of 1e-40 would turn every angle into infinity: the factor's range is
    // what context extension uses, with room to spare.
    if (!(hp.rope_freq_scale >= 1e-6f && hp.rope_freq_scale <= 1e6f))
        return status::error(strfmt("the RoPE scaling factor %g is out of range [1e-6, 1e6]", 1.0 / double(hp.rope_freq_scale)));

    if (hp.arch == "yoco") {
        // The split: self-decoder layers [0, Ls), cross-decoder layers [Ls, L); both non-empty.
        auto ls = f.get_int(a + "self_decoder_block_count");
        if (!ls) return ls.error();
        if (ls.value() < 1 || ls.value() >= hp.n_layer)
            return status::error(strfmt("%sself_decoder_block_count %lld must be in [1, %lld] (block_count %lld)", a.c_str(),
                                        (long long)ls.value(), (long long)(hp.n_layer - 1), (long long)hp.n_layer));
        hp.n_layer_self = ls.value();
        KVS_TRY(need("sliding_window", &hp.sliding_window, 1, int64_t(1) << 26));
    }
    if (ds2) {
        // Latent attention: the query/key size is qk_nope + qk_rope (n_rot), the value size its own.
        hp.v_head = v_len;
        KVS_TRY(need("attention.kv_lora_rank", &hp.kv_lora, 1, 1 << 16));
        if (ds2_split) {
            // key_length, value_length and head_count_kv are the latent's; the heads' own sizes follow.
            if (hp.head_dim != hp.kv_lora + hp.n_rot || v_len != hp.kv_lora || hp.n_head_kv != 1)
                return status::error(strfmt("%sattention.key_length %lld, value_length %lld and head_count_kv %lld must be kv_lora_rank + "
                                            "rope.dimension_count (%lld), kv_lora_rank (%lld) and 1 in a file with key_length_mla",
                                            a.c_str(), (long long)hp.head_dim, (long long)v_len, (long long)hp.n_head_kv,
                                            (long long)(hp.kv_lora + hp.n_rot), (long long)hp.kv_lora));
            KVS_TRY(need("attention.key_length_mla", &hp.head_dim, 2, 1024));
            KVS_TRY(need("attention.value_length_mla", &hp.v_head, 1, 1024));
            if (hp.head_dim % 2 != 0) return status::error(strfmt("%sattention.key_length_mla %lld must be even", a.c_str(), (long long)hp.head_dim));
            hp.n_head_kv = hp.n_head;
            hp.mla_split = true;
        }
        KVS_TRY(opt("attention.q_lora_rank", &hp.q_lora, 0, 1 << 16));
        if (hp.n_rot >= hp.head_dim)
            return status::error(strfmt("%srope.dimension_count %lld must be smaller than attention.key_length %lld (qk_nope + qk_rope)",
                                        a.c_str(), (long long)hp.n_rot, (long long)hp.head_dim));
        if (hp.n_head_kv != hp.n_head)
            return status::error(strfmt("%sattention.head_count_kv %lld must equal head_count %lld", a.c_str(), (long long)hp.n_head_kv,
                                        (long long)hp.n_head));
        KVS_TRY(need("leading_dense_block_count", &hp.n_layer_dense_lead, 0, hp.n_layer));
        if (hp.n_layer_dense_lead < hp.n_layer) {
            KVS_TRY(need("expert_count", &hp.n_expert, 1, 4096));
            KVS_TRY(need("expert_used_count", &hp.n_expert_used, 1, hp.n_expert));
            KVS_TRY(opt("expert_shared_count", &hp.n_expert_shared, 0, 4096));
            KVS_TRY(need("expert_feed_forward_length", &hp.n_ff_exp, 1, big));
            auto sc = f.get_float_opt(a + "expert_weights_scale");
            if (!sc) return sc.error();
            if (sc.value()) hp.expert_weights_scale = float(*sc.value());
            if (!(hp.expert_weights_scale > 0 && hp.expert_weights_scale <= 1e6))
                return status::error(strfmt("%sexpert_weights_scale %g is out of range (0, 1e6]", a.c_str(), hp.expert_weights_scale));
            auto nrm = f.get_bool_opt(a + "expert_weights_norm");
            if (!nrm) return nrm.error();
            if (nrm.value()) hp.expert_weights_norm = *nrm.value();
            int64_t gating = 1;
            KVS_TRY(opt("expert_gating_func", &gating, 0, 16));
            if (gating != 1 && gating != 0)  // 0: unset in files written before the key existed (softmax)
                return status::error(strfmt("%sexpert_gating_func %lld is not supported (1: softmax)", a.c_str(), (long long)gating));
        }
    }
    if (hp.arch == "qwen2") {
        hp.rope = cpu::rope_layout::neox;
        hp.qkv_bias = true;
    }
    return hp;
}

}  // namespace kvs
