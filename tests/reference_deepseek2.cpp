#include "reference_deepseek2.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "kernels/cpu/quest.h"
#include "reference_model.h"
#include "reference_math.h"

namespace kvs::test {

namespace {

constexpr double k_pi = 3.14159265358979323846;

// The hyper-parameters the forward pass needs, read from the metadata (prefix "deepseek2.").
struct ds2_hparams {
    int64_t n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_ff = 0, n_dense_lead = 0;
    int64_t q_lora = 0, kv_lora = 0, qk_nope = 0, qk_rope = 0, v_head = 0;
    int64_t n_expert = 0, n_expert_used = 0, n_expert_shared = 0, n_ff_exp = 0;
    double rope_base = 10000.0, rms_eps = 1e-6, expert_scale = 1.0;
    bool expert_norm = false;
    bool yarn = false;
    bool split = false;  // attn_k_b / attn_v_b instead of attn_kv_b (heads in the *_mla keys)
    double yarn_factor = 1.0, yarn_log_mul = 0.0;
    int64_t yarn_orig_ctx = 0;

    int64_t qk() const { return qk_nope + qk_rope; }
};

// Reads keys and tensors of one file, remembering the first problem (later reads then return
// zeros; the caller checks `error` before using anything).
struct ds2_reader {
    const gguf_file& f;
    std::string error;

    void fail(const std::string& what) {
        if (error.empty()) error = what;
    }
    int64_t integer(const std::string& key) {
        auto v = f.get_int(key);
        if (!v) fail(v.message());
        return v ? v.value() : 0;
    }
    double real(const std::string& key) {
        auto v = f.get_float(key);
        if (!v) fail(v.message());
        return v ? v.value() : 0.0;
    }
    std::optional<int64_t> integer_opt(const std::string& key) {
        auto v = f.get_int_opt(key);
        if (!v) fail(v.message());
        return v ? v.value() : std::nullopt;
    }
    std::optional<double> real_opt(const std::string& key) {
        auto v = f.get_float_opt(key);
        if (!v) fail(v.message());
        return v ? v.value() : std::nullopt;
    }
    std::optional<bool> boolean_opt(const std::string& key) {
        auto v = f.get_bool_opt(key);
        if (!v) fail(v.message());
        return v ? v.value() : std::nullopt;
    }
    std::optional<std::string> string_opt(const std::string& key) {
        auto v = f.get_string_opt(key);
        if (!v) fail(v.message());
        return v ? v.value() : std::nullopt;
    }
    // Tensor `name` of dims `ne` (GGUF order), dequantized to double, row after row.
    std::vector<double> tensor(const std::string& name, const std::vector<int64_t>& ne) {
        const gguf_tensor_info* t = f.find_tensor(name);
        if (!t) {
            fail("tensor " + name + " missing");
            return {};
        }
        bool same = t->n_dims == int(ne.size());
        for (size_t d = 0; same && d < ne.size(); ++d) same = t->ne[d] == ne[d];
        if (!same) {
            std::string want = "[";
            for (size_t d = 0; d < ne.size(); ++d) want += (d ? ", " : "") + std::to_string(ne[d]);
            fail("tensor " + name + ": dims " + t->shape_string() + ", expected " + want + "]");
            return {};
        }
        std::vector<float> row(size_t(t->ne[0]));  // (ne0) f32 scratch
        std::vector<double> out(size_t(t->n_elements()));
        const size_t row_bytes = dtype_row_bytes(t->type, t->ne[0]);
        const int64_t rows = t->n_elements() / t->ne[0];
        for (int64_t r = 0; r < rows; ++r) {
            if (!dequantize_row(t->type, t->data + size_t(r) * row_bytes, row.data(), t->ne[0])) {
                fail("tensor " + name + ": cannot dequantize " + dtype_name(t->type));
                return {};
            }
            std::copy(row.begin(), row.end(), out.begin() + r * t->ne[0]);
        }
        return out;
    }
};

ds2_hparams read_hparams(ds2_reader& r) {
    const std::string a = "deepseek2.";
    ds2_hparams hp;
    auto arch = r.string_opt("general.architecture");
    if (arch != std::optional<std::string>("deepseek2")) r.fail("general.architecture is not \"deepseek2\"");
    hp.n_embd = r.integer(a + "embedding_length");
    hp.n_layer = r.integer(a + "block_count");
    hp.n_ff = r.integer(a + "feed_forward_length");
    hp.n_head = r.integer(a + "attention.head_count");
    hp.rope_base = r.real(a + "rope.freq_base");
    hp.rms_eps = r.real(a + "attention.layer_norm_rms_epsilon");
    hp.n_dense_lead = r.integer(a + "leading_dense_block_count");
    hp.q_lora = r.integer_opt(a + "attention.q_lora_rank").value_or(0);
    hp.kv_lora = r.integer(a + "attention.kv_lora_rank");
    // Files with attn_k_b / attn_v_b describe the heads in *_mla keys (the generic ones then
    // describe the latent).
    hp.split = r.integer_opt(a + "attention.key_length_mla").has_value();
    const int64_t key_length = r.integer(a + (hp.split ? "attention.key_length_mla" : "attention.key_length"));
    hp.v_head = r.integer(a + (hp.split ? "attention.value_length_mla" : "attention.value_length"));
    hp.qk_rope = r.integer(a + "rope.dimension_count");
    hp.qk_nope = key_length - hp.qk_rope;
    hp.n_ff_exp = r.integer(a + "expert_feed_forward_length");
    hp.n_expert = r.integer(a + "expert_count");
    hp.n_expert_shared = r.integer(a + "expert_shared_count");
    hp.n_expert_used = r.integer(a + "expert_used_count");
    hp.expert_scale = r.real_opt(a + "expert_weights_scale").value_or(1.0);
    hp.expert_norm = r.boolean_opt(a + "expert_weights_norm").value_or(false);
    if (r.integer_opt(a + "expert_gating_func").value_or(1) != 1) r.fail("expert_gating_func: only 1 (softmax) is modelled");
    if (r.string_opt(a + "rope.scaling.type").value_or("none") == "yarn") {
        hp.yarn = true;
        hp.yarn_factor = r.real(a + "rope.scaling.factor");
        hp.yarn_orig_ctx = r.integer(a + "rope.scaling.original_context_length");
        hp.yarn_log_mul = r.real_opt(a + "rope.scaling.yarn_log_multiplier").value_or(0.0);
        if (!(hp.yarn_factor >= 1.0) || hp.yarn_orig_ctx <= 0) r.fail("rope.scaling: YaRN needs factor >= 1 and an original context");
    }
    if (const gguf_tensor_info* t = r.f.find_tensor("token_embd.weight"); t && t->n_dims == 2) hp.n_vocab = t->ne[1];
    if (r.error.empty()) {
        const bool sane = hp.n_embd > 0 && hp.n_layer > 0 && hp.n_head > 0 && hp.n_vocab > 0 && hp.kv_lora > 0 &&
                          hp.qk_nope >= 0 && hp.qk_rope > 0 && hp.qk_rope % 2 == 0 && hp.v_head > 0 && hp.q_lora >= 0 &&
                          hp.n_dense_lead >= 0 && (hp.n_dense_lead >= hp.n_layer ||
                                                   (hp.n_expert > 0 && hp.n_expert_used > 0 &&
                                                    hp.n_expert_used <= hp.n_expert && hp.n_ff_exp > 0 && hp.n_expert_shared >= 0));
        if (!sane) r.fail("deepseek2 hyper-parameters out of range");
    }
    return hp;
}

// The rotation angle of pair j (of n_rot / 2) at position `pos`, YaRN's blend of interpolated
// and extrapolated frequencies when on.
double rope_theta(const ds2_hparams& hp, int64_t pos, int64_t j) {
    const double n_rot = double(hp.qk_rope);
    const double extrap = double(pos) * std::pow(hp.rope_base, -2.0 * double(j) / n_rot);
    if (!hp.yarn) return extrap;
    const double freq_scale = 1.0 / hp.yarn_factor;
    auto corr_dim = [&](double n_rotations) {
        return n_rot * std::log(double(hp.yarn_orig_ctx) / (n_rotations * 2.0 * k_pi)) / (2.0 * std::log(hp.rope_base));
    };
    const double low = std::max(0.0, std::floor(corr_dim(32.0)));          // beta_fast
    const double high = std::min(n_rot - 1.0, std::ceil(corr_dim(1.0)));   // beta_slow
    const double ramp = 1.0 - std::clamp((double(j) - low) / std::max(0.001, high - low), 0.0, 1.0);
    return freq_scale * extrap * (1.0 - ramp) + extrap * ramp;
}

// Rotates the n_rot values at v, adjacent pairs (2j, 2j + 1), to position `pos`.
void rope(double* v, const ds2_hparams& hp, int64_t pos) {
    for (int64_t j = 0; j < hp.qk_rope / 2; ++j) {
        const double theta = rope_theta(hp, pos, j), c = std::cos(theta), s = std::sin(theta);
        const double x0 = v[2 * j], x1 = v[2 * j + 1];
        v[2 * j] = x0 * c - x1 * s;
        v[2 * j + 1] = x0 * s + x1 * c;
    }
}

// down (n_embd, n_hidden) (silu(gate · h) ⊙ (up · h)), gate and up (n_hidden, n_embd).
std::vector<double> swiglu(const double* gate, const double* up, const double* down, const std::vector<double>& h,
                           int64_t n_hidden, int64_t n_embd) {
    auto g = ref_matvec(gate, h, n_hidden), u = ref_matvec(up, h, n_hidden);
    for (int64_t i = 0; i < n_hidden; ++i) g[size_t(i)] = g[size_t(i)] / (1.0 + std::exp(-g[size_t(i)])) * u[size_t(i)];
    return ref_matvec(down, g, n_embd);
}

}  // namespace

namespace {

// One layer's attention inputs in the absorbed form, for the policies that select by them.
struct ds2_layer_data {
    int64_t layer = 0;
    const std::vector<std::vector<double>>* entry = nullptr;  // (n, kv_lora + qk_rope): [c ; k_pe rotated at the token's position]
    const std::vector<std::vector<double>>* qlat = nullptr;   // (n, H·(kv_lora + qk_rope)): per head [W_UK,iᵀ q_nope_i ; RoPE(q_pe_i)]
};

// Which tokens row t attends at a layer and at which positions, and what it learns from them.
struct ds2_pattern {
    // The tokens row t attends (ascending, t last).
    std::function<std::vector<int64_t>(const ds2_layer_data&, int64_t t)> kept;
    // Positions inside the cache (StreamingLLM): kept[c] rotated at c, the query at the last
    // rank; otherwise every token at its own position.
    bool in_cache_positions = false;
    // Optional: after row t's attention, the probabilities every kept token received summed
    // over the H heads (kept.size()).
    std::function<void(const ds2_layer_data&, int64_t t, const std::vector<int64_t>& kept, const std::vector<double>& probs)> observe;
};

std::vector<std::vector<double>> pattern_logits(const gguf_file& f, const std::vector<int32_t>& tokens, const ds2_pattern& pat,
                                                std::vector<reference_deepseek2_route>* routes) {
    ds2_reader r{f, {}};
    const ds2_hparams hp = read_hparams(r);
    auto failed = [&r]() {
        if (r.error.empty()) return false;
        ADD_FAILURE() << "reference_deepseek2_logits: " << r.error;
        return true;
    };
    if (failed()) return {};
    const int64_t E = hp.n_embd, H = hp.n_head, QK = hp.qk(), NOPE = hp.qk_nope, ROPE = hp.qk_rope, VH = hp.v_head;
    const int64_t n = int64_t(tokens.size());
    for (int32_t t : tokens)
        if (t < 0 || t >= hp.n_vocab) {
            ADD_FAILURE() << "reference_deepseek2_logits: token " << t << " outside the vocabulary of " << hp.n_vocab;
            return {};
        }
    if (routes) routes->clear();

    // Scores: (q_i · k_ij) · mscale² / sqrt(qk).
    const double mscale = hp.yarn ? 1.0 + hp.yarn_log_mul * std::log(hp.yarn_factor) : 1.0;
    const double kq_scale = mscale * mscale / std::sqrt(double(QK));

    const auto emb = r.tensor("token_embd.weight", {E, hp.n_vocab});
    if (failed()) return {};
    std::vector<std::vector<double>> x(static_cast<size_t>(n));  // (n, n_embd) residual stream
    for (int64_t t = 0; t < n; ++t) x[size_t(t)].assign(emb.begin() + tokens[size_t(t)] * E, emb.begin() + (tokens[size_t(t)] + 1) * E);

    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        // ---- attention (MLA)
        const auto attn_norm = r.tensor(p + "attn_norm.weight", {E});
        std::vector<double> wq, wq_a, q_a_norm, wq_b;
        if (hp.q_lora > 0) {
            wq_a = r.tensor(p + "attn_q_a.weight", {E, hp.q_lora});
            q_a_norm = r.tensor(p + "attn_q_a_norm.weight", {hp.q_lora});
            wq_b = r.tensor(p + "attn_q_b.weight", {hp.q_lora, H * QK});
        } else {
            wq = r.tensor(p + "attn_q.weight", {E, H * QK});
        }
        const auto wkv_a = r.tensor(p + "attn_kv_a_mqa.weight", {E, hp.kv_lora + ROPE});
        const auto kv_a_norm = r.tensor(p + "attn_kv_a_norm.weight", {hp.kv_lora});
        // W_kv_b (H·(NOPE + VH), kv_lora): per head the rows of W_UK,i then W_UV,i — the file's
        // attn_kv_b, or assembled from attn_k_b (per head W_UK,iᵀ) and attn_v_b (per head W_UV,i).
        std::vector<double> wkv_b;
        if (hp.split) {
            const auto k_b = r.tensor(p + "attn_k_b.weight", {NOPE, hp.kv_lora, H});  // (H, kv_lora, NOPE)
            const auto v_b = r.tensor(p + "attn_v_b.weight", {hp.kv_lora, VH, H});    // (H, VH, kv_lora)
            if (failed()) return {};
            wkv_b.assign(size_t(H * (NOPE + VH) * hp.kv_lora), 0.0);
            for (int64_t i = 0; i < H; ++i)
                for (int64_t c = 0; c < hp.kv_lora; ++c) {
                    for (int64_t j = 0; j < NOPE; ++j)
                        wkv_b[size_t((i * (NOPE + VH) + j) * hp.kv_lora + c)] = k_b[size_t((i * hp.kv_lora + c) * NOPE + j)];
                    for (int64_t j = 0; j < VH; ++j)
                        wkv_b[size_t((i * (NOPE + VH) + NOPE + j) * hp.kv_lora + c)] = v_b[size_t((i * VH + j) * hp.kv_lora + c)];
                }
        } else {
            wkv_b = r.tensor(p + "attn_kv_b.weight", {hp.kv_lora, H * (NOPE + VH)});
        }
        const auto wo = r.tensor(p + "attn_output.weight", {H * VH, E});
        if (failed()) return {};

        // Per token: q (H, QK) rotated, k (H, QK) with the shared rotated k_pe, v (H, VH).
        std::vector<std::vector<double>> Q(static_cast<size_t>(n)), K(static_cast<size_t>(n)), V(static_cast<size_t>(n));
        std::vector<std::vector<double>> C(static_cast<size_t>(n));  // (n, kv_lora) the latents
        for (int64_t t = 0; t < n; ++t) {
            const auto h = ref_rmsnorm(x[size_t(t)], attn_norm, hp.rms_eps);
            std::vector<double> q;  // (H, QK): per head [q_nope ; q_pe]
            if (hp.q_lora > 0) {
                q = ref_matvec(wq_b.data(), ref_rmsnorm(ref_matvec(wq_a.data(), h, hp.q_lora), q_a_norm, hp.rms_eps), H * QK);
            } else {
                q = ref_matvec(wq.data(), h, H * QK);
            }
            // q_pe and k_pe are rotated below, at the positions the policy gives them.
            const auto kv_a = ref_matvec(wkv_a.data(), h, hp.kv_lora + ROPE);  // [c (kv_lora) ; k_pe (ROPE)]
            const std::vector<double> c =
                ref_rmsnorm(std::vector<double>(kv_a.begin(), kv_a.begin() + hp.kv_lora), kv_a_norm, hp.rms_eps);
            std::vector<double> k_pe(kv_a.begin() + hp.kv_lora, kv_a.end());  // (ROPE), one for every head
            const auto kv = ref_matvec(wkv_b.data(), c, H * (NOPE + VH));  // (H, NOPE + VH): per head [k_nope ; v]
            std::vector<double> k(size_t(H * QK)), v(size_t(H * VH));
            for (int64_t i = 0; i < H; ++i) {
                const double* src = kv.data() + i * (NOPE + VH);
                std::copy(src, src + NOPE, k.begin() + i * QK);
                std::copy(k_pe.begin(), k_pe.end(), k.begin() + i * QK + NOPE);
                std::copy(src + NOPE, src + NOPE + VH, v.begin() + i * VH);
            }
            Q[size_t(t)] = std::move(q), K[size_t(t)] = std::move(k), V[size_t(t)] = std::move(v), C[size_t(t)] = c;
        }
        // The absorbed form of the same layer (for policies that select by it): the latent
        // entries [c ; k_pe] at their tokens' positions and each head's q_latent.
        std::vector<std::vector<double>> entry(static_cast<size_t>(n)), qlat(static_cast<size_t>(n));
        for (int64_t t = 0; t < n; ++t) {
            entry[size_t(t)] = C[size_t(t)];
            entry[size_t(t)].insert(entry[size_t(t)].end(), K[size_t(t)].begin() + NOPE, K[size_t(t)].begin() + QK);
            rope(entry[size_t(t)].data() + hp.kv_lora, hp, t);
            qlat[size_t(t)].assign(size_t(H * (hp.kv_lora + ROPE)), 0.0);
            for (int64_t i = 0; i < H; ++i) {
                double* ql = qlat[size_t(t)].data() + i * (hp.kv_lora + ROPE);
                for (int64_t j = 0; j < NOPE; ++j) {  // W_UK,i: rows i·(NOPE + VH) + j of W_kv_b
                    const double qj = Q[size_t(t)][size_t(i * QK + j)];
                    const double* w = wkv_b.data() + (i * (NOPE + VH) + j) * hp.kv_lora;
                    for (int64_t c = 0; c < hp.kv_lora; ++c) ql[c] += qj * w[c];
                }
                std::copy(Q[size_t(t)].begin() + i * QK + NOPE, Q[size_t(t)].begin() + (i + 1) * QK, ql + hp.kv_lora);
                rope(ql + hp.kv_lora, hp, t);
            }
        }
        const ds2_layer_data ld{il, &entry, &qlat};
        for (int64_t t = 0; t < n; ++t) {
            std::vector<double> o(size_t(H * VH), 0.0);  // (H, VH) concatenated head outputs
            const std::vector<int64_t> kept = pat.kept(ld, t);
            const size_t nk = kept.size();
            auto pos_of = [&](size_t c) { return pat.in_cache_positions ? int64_t(c) : kept[c]; };
            // The query's RoPE parts at its position, every kept key's shared k_pe at its own.
            std::vector<double> q = Q[size_t(t)];
            for (int64_t i = 0; i < H; ++i) rope(q.data() + i * QK + NOPE, hp, pat.in_cache_positions ? int64_t(nk) - 1 : t);
            std::vector<std::vector<double>> k_rot(nk);
            for (size_t c = 0; c < nk; ++c) {
                k_rot[c].assign(K[size_t(kept[c])].begin() + NOPE, K[size_t(kept[c])].begin() + QK);  // head 0's copy of k_pe
                rope(k_rot[c].data(), hp, pos_of(c));
            }
            std::vector<double> prob_sum(nk, 0.0);
            for (int64_t i = 0; i < H; ++i) {
                std::vector<double> s(nk, 0.0);
                double mx = -HUGE_VAL;
                for (size_t c = 0; c < nk; ++c) {
                    const std::vector<double>& kj = K[size_t(kept[c])];
                    double acc = 0;
                    for (int64_t d = 0; d < NOPE; ++d) acc += q[size_t(i * QK + d)] * kj[size_t(i * QK + d)];
                    for (int64_t d = 0; d < ROPE; ++d) acc += q[size_t(i * QK + NOPE + d)] * k_rot[c][size_t(d)];
                    s[c] = acc * kq_scale;
                    mx = std::max(mx, s[c]);
                }
                double sum = 0;
                for (double& v : s) sum += (v = std::exp(v - mx));
                for (size_t c = 0; c < nk; ++c) {
                    const double pj = s[c] / sum;
                    prob_sum[c] += pj;
                    for (int64_t d = 0; d < VH; ++d) o[size_t(i * VH + d)] += pj * V[size_t(kept[c])][size_t(i * VH + d)];
                }
            }
            if (pat.observe) pat.observe(ld, t, kept, prob_sum);
            const auto out = ref_matvec(wo.data(), o, E);
            for (int64_t d = 0; d < E; ++d) x[size_t(t)][size_t(d)] += out[size_t(d)];
        }

        // ---- FFN: dense or mixture of experts
        const auto ffn_norm = r.tensor(p + "ffn_norm.weight", {E});
        if (failed()) return {};
        if (il < hp.n_dense_lead) {
            const auto gate = r.tensor(p + "ffn_gate.weight", {E, hp.n_ff}), up = r.tensor(p + "ffn_up.weight", {E, hp.n_ff}),
                       down = r.tensor(p + "ffn_down.weight", {hp.n_ff, E});
            if (failed()) return {};
            for (int64_t t = 0; t < n; ++t) {
                const auto out = swiglu(gate.data(), up.data(), down.data(), ref_rmsnorm(x[size_t(t)], ffn_norm, hp.rms_eps), hp.n_ff, E);
                for (int64_t d = 0; d < E; ++d) x[size_t(t)][size_t(d)] += out[size_t(d)];
            }
            continue;
        }
        const int64_t FX = hp.n_ff_exp, FS = hp.n_ff_exp * hp.n_expert_shared, NE = hp.n_expert;
        const auto router = r.tensor(p + "ffn_gate_inp.weight", {E, NE});
        const auto gate_x = r.tensor(p + "ffn_gate_exps.weight", {E, FX, NE}), up_x = r.tensor(p + "ffn_up_exps.weight", {E, FX, NE}),
                   down_x = r.tensor(p + "ffn_down_exps.weight", {FX, E, NE});
        std::vector<double> gate_s, up_s, down_s;
        if (FS > 0) {
            gate_s = r.tensor(p + "ffn_gate_shexp.weight", {E, FS});
            up_s = r.tensor(p + "ffn_up_shexp.weight", {E, FS});
            down_s = r.tensor(p + "ffn_down_shexp.weight", {FS, E});
        }
        if (failed()) return {};
        for (int64_t t = 0; t < n; ++t) {
            const auto h2 = ref_rmsnorm(x[size_t(t)], ffn_norm, hp.rms_eps);
            auto probs = ref_matvec(router.data(), h2, NE);  // router logits, then their softmax
            const double mx = *std::max_element(probs.begin(), probs.end());
            double sum = 0;
            for (double& v : probs) sum += (v = std::exp(v - mx));
            for (double& v : probs) v /= sum;
            std::vector<int32_t> order(static_cast<size_t>(NE));
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return probs[size_t(a)] > probs[size_t(b)]; });
            order.resize(size_t(hp.n_expert_used));
            std::vector<double> w(order.size());
            double chosen = 0;
            for (size_t k = 0; k < order.size(); ++k) chosen += (w[k] = probs[size_t(order[k])]);
            for (double& v : w) v = (hp.expert_norm ? v / chosen : v) * hp.expert_scale;

            std::vector<double> out(size_t(E), 0.0);
            for (size_t k = 0; k < order.size(); ++k) {
                const int64_t e = order[k];
                const auto y = swiglu(gate_x.data() + e * FX * E, up_x.data() + e * FX * E, down_x.data() + e * E * FX, h2, FX, E);
                for (int64_t d = 0; d < E; ++d) out[size_t(d)] += w[k] * y[size_t(d)];
            }
            if (FS > 0) {
                const auto y = swiglu(gate_s.data(), up_s.data(), down_s.data(), h2, FS, E);
                for (int64_t d = 0; d < E; ++d) out[size_t(d)] += y[size_t(d)];
            }
            for (int64_t d = 0; d < E; ++d) x[size_t(t)][size_t(d)] += out[size_t(d)];
            if (routes) routes->push_back({il, t, h2, probs, order, w});
        }
    }
    const auto out_norm = r.tensor("output_norm.weight", {E});
    const auto head = r.tensor("output.weight", {E, hp.n_vocab});
    if (failed()) return {};
    std::vector<std::vector<double>> logits(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) logits[size_t(t)] = ref_matvec(head.data(), ref_rmsnorm(x[size_t(t)], out_norm, hp.rms_eps), hp.n_vocab);
    return logits;
}

}  // namespace

std::vector<std::vector<double>> reference_deepseek2_logits(const gguf_file& f, const std::vector<int32_t>& tokens,
                                                            std::vector<reference_deepseek2_route>* routes) {
    return reference_deepseek2_policy_logits(f, tokens, kv_policy{}, routes);
}

std::vector<std::vector<double>> reference_deepseek2_policy_logits(const gguf_file& f, const std::vector<int32_t>& tokens,
                                                                   const kv_policy& policy,
                                                                   std::vector<reference_deepseek2_route>* routes) {
    if (policy.kind != kv_policy_kind::dense && policy.kind != kv_policy_kind::window && policy.kind != kv_policy_kind::streaming) {
        ADD_FAILURE() << "reference_deepseek2_policy_logits: policy " << policy.spec() << " is not modelled";
        return {};
    }
    ds2_pattern pat;
    pat.kept = [&policy](const ds2_layer_data&, int64_t t) { return reference_kept(policy, t); };
    // Each kept token at its rank among them: for dense and window the same relative positions
    // as the tokens' own; for StreamingLLM the positions inside the cache.
    pat.in_cache_positions = true;
    return pattern_logits(f, tokens, pat, routes);
}

std::vector<std::vector<double>> reference_deepseek2_h2o_logits(const gguf_file& f, const std::vector<int32_t>& tokens, int64_t heavy,
                                                                int64_t recent, const std::vector<int64_t>& chunk_ends,
                                                                std::vector<reference_h2o_kept>* kept_out) {
    const size_t n = tokens.size();
    if (chunk_ends.empty() || chunk_ends.back() != int64_t(n) || !std::is_sorted(chunk_ends.begin(), chunk_ends.end())) {
        ADD_FAILURE() << "reference_deepseek2_h2o_logits: chunk ends must ascend to the token count";
        return {};
    }
    // The one latent "KV head" of the current layer: the tokens held (ascending), every token's
    // accumulated score, and the current chunk.
    int64_t layer = -1, start = 0;
    size_t chunk = 0;
    std::vector<int64_t> held;
    std::vector<double> score;
    ds2_pattern pat;
    pat.kept = [&](const ds2_layer_data& ld, int64_t t) {
        if (ld.layer != layer) layer = ld.layer, start = 0, chunk = 0, held.clear(), score.assign(n, 0.0);
        std::vector<int64_t> vis = held;  // the held set, then the chunk's tokens up to t
        for (int64_t j = start; j <= t; ++j) vis.push_back(j);
        return vis;
    };
    pat.observe = [&](const ds2_layer_data& ld, int64_t t, const std::vector<int64_t>& kept, const std::vector<double>& probs) {
        for (size_t c = 0; c < kept.size(); ++c) score[size_t(kept[c])] += probs[c];  // summed over the H heads
        if (t + 1 != chunk_ends[chunk]) return;
        for (int64_t j = start; j <= t; ++j) held.push_back(j);
        if (int64_t(held.size()) > heavy + recent) {  // the R latest, then the H best scored (equal: the earlier)
            std::vector<int64_t> keep(held.end() - recent, held.end());
            std::vector<int64_t> rest(held.begin(), held.end() - recent);
            std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return score[size_t(a)] > score[size_t(b)]; });
            keep.insert(keep.end(), rest.begin(), rest.begin() + heavy);
            std::sort(keep.begin(), keep.end());
            held = keep;
        }
        if (kept_out) {
            reference_h2o_kept k{t + 1, ld.layer, 0, held, {}};
            for (int64_t j : held) k.scores.push_back(score[size_t(j)]);
            kept_out->push_back(std::move(k));
        }
        start = t + 1;
        ++chunk;
    };
    return pattern_logits(f, tokens, pat, nullptr);
}

std::vector<std::vector<double>> reference_deepseek2_quest_logits(const gguf_file& f, const std::vector<int32_t>& tokens, int64_t budget,
                                                                  int64_t page_size, int64_t prompt_len,
                                                                  std::vector<reference_quest_choice>* choices) {
    const int64_t k = std::max<int64_t>(1, budget / page_size);
    ds2_pattern pat;
    pat.kept = [&](const ds2_layer_data& ld, int64_t t) {
        std::vector<int64_t> all(size_t(t) + 1);
        std::iota(all.begin(), all.end(), 0);
        const int64_t n_pages = t / page_size + 1;  // pages of tokens 0..t; the newest holds t
        // Prefill, the first two layers, and a sequence within the budget: dense.
        if (t < prompt_len || ld.layer < 2 || n_pages <= k) return all;
        const std::vector<std::vector<double>>& entry = *ld.entry;
        const int64_t width = int64_t(entry[0].size()), n_head = int64_t((*ld.qlat)[size_t(t)].size()) / width;
        std::vector<double> score(size_t(n_pages - 1));
        for (int64_t p = 0; p + 1 < n_pages; ++p) {
            std::vector<double> mn(static_cast<size_t>(width)), mx(static_cast<size_t>(width));  // the page's channel-wise latent bounds
            for (int64_t d = 0; d < width; ++d) {
                double lo = 1e300, hi = -1e300;
                for (int64_t j = p * page_size; j < (p + 1) * page_size; ++j)
                    lo = std::min(lo, entry[size_t(j)][size_t(d)]), hi = std::max(hi, entry[size_t(j)][size_t(d)]);
                // Stored in bf16, rounded outwards (kv_cache::key_bounds).
                mn[size_t(d)] = cpu::bf16_to_f32(cpu::bf16_round_down(float(lo)));
                mx[size_t(d)] = cpu::bf16_to_f32(cpu::bf16_round_up(float(hi)));
            }
            double best = -1e300;
            for (int64_t i = 0; i < n_head; ++i) {  // the page's best head
                const double* ql = (*ld.qlat)[size_t(t)].data() + i * width;
                double s = 0;
                for (int64_t d = 0; d < width; ++d) s += std::max(ql[d] * mn[size_t(d)], ql[d] * mx[size_t(d)]);
                best = std::max(best, s);
            }
            score[size_t(p)] = best;
        }
        std::vector<int32_t> order(score.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return score[size_t(a)] > score[size_t(b)]; });
        std::vector<int32_t> pages(order.begin(), order.begin() + (k - 1));
        std::sort(pages.begin(), pages.end());
        pages.push_back(int32_t(n_pages - 1));
        if (choices) choices->push_back({t, ld.layer, 0, pages, score});
        std::vector<int64_t> out;
        for (int32_t p : pages)
            for (int64_t j = p * page_size; j < std::min<int64_t>((p + 1) * page_size, t + 1); ++j) out.push_back(j);
        return out;
    };
    return pattern_logits(f, tokens, pat, nullptr);
}

}  // namespace kvs::test
