#include "reference_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "gguf/gguf_writer.h"
#include "kernels/cpu/quest.h"
#include "model/shapes.h"
#include "reference_math.h"
#include "test_util.h"

namespace kvs::test {

namespace {

// ---- float64 reference -------------------------------------------------------------------

std::vector<double> dequant(const gguf_tensor_info* t) {
    std::vector<float> tmp(size_t(t->n_elements()));
    const size_t row = dtype_row_bytes(t->type, t->ne[0]);
    const int64_t rows = t->n_elements() / t->ne[0];
    for (int64_t r = 0; r < rows; ++r) dequantize_row(t->type, t->data + size_t(r) * row, tmp.data() + r * t->ne[0], t->ne[0]);
    return std::vector<double>(tmp.begin(), tmp.end());
}

void rope(std::vector<double>& x, int64_t n_head, int64_t hd, int64_t n_rot, int64_t pos, double base, double scale, bool neox) {
    for (int64_t h = 0; h < n_head; ++h) {
        double* v = x.data() + h * hd;
        for (int64_t i = 0; i < n_rot / 2; ++i) {
            const double theta = double(pos) * scale * std::pow(base, -2.0 * double(i) / double(n_rot));
            const int64_t a = neox ? i : 2 * i, b = neox ? i + n_rot / 2 : 2 * i + 1;
            const double x0 = v[a], x1 = v[b];
            v[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
            v[b] = x0 * std::sin(theta) + x1 * std::cos(theta);
        }
    }
}

}  // namespace

namespace {

// Row t attends the tokens pattern.kept(t) (ascending); its query is rotated at qpos(t) and
// key j at kpos(t, j), so a policy that assigns positions inside the cache rotates each key
// anew for every query, straight from the definition.
// An optional per-head rule (Quest) then picks, per layer and KV head, which of the kept tokens
// that head attends (indices into kept), from the row's rotated queries and the kept keys.
struct attention_pattern {
    std::function<std::vector<int64_t>(int64_t t)> kept;
    std::function<int64_t(int64_t t, const std::vector<int64_t>& kept)> qpos;
    std::function<int64_t(int64_t t, const std::vector<int64_t>& kept, size_t index)> kpos;
    std::function<std::vector<size_t>(int64_t t, int64_t layer, int64_t kv_head, const std::vector<double>& q,
                                      const std::vector<std::vector<double>>& keys)>
        head_select;
    // An optional rule for the values row t reads (KIVI): rewrites the kept tokens' rotated keys
    // and values, (kept, n_kv_head · head_dim) each, in place.
    std::function<void(int64_t t, int64_t layer, std::vector<std::vector<double>>& keys, std::vector<std::vector<double>>& values)>
        transform_kv;
};

std::vector<std::vector<double>> pattern_logits(const llama_model& m, const std::vector<int32_t>& tokens,
                                                const attention_pattern& pat) {
    const model_hparams& hp = m.hparams();
    const gguf_file& f = m.file();
    const int64_t d = hp.n_embd, hd = hp.head_dim, nkv = hp.n_head_kv * hd;
    const bool neox = hp.rope == cpu::rope_layout::neox;
    auto T = [&](const std::string& n) { return dequant(f.find_tensor(n)); };
    auto emb = T("token_embd.weight");
    std::vector<std::vector<double>> xs;
    for (int32_t t : tokens) xs.emplace_back(emb.begin() + t * d, emb.begin() + (t + 1) * d);
    const size_t n = tokens.size();
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        auto an = T(p + "attn_norm.weight"), wq = T(p + "attn_q.weight"), wk = T(p + "attn_k.weight"),
             wv = T(p + "attn_v.weight"), wo = T(p + "attn_output.weight"), fn = T(p + "ffn_norm.weight"),
             wg = T(p + "ffn_gate.weight"), wu = T(p + "ffn_up.weight"), wd = T(p + "ffn_down.weight");
        std::vector<double> bq, bk, bv;
        if (hp.qkv_bias) bq = T(p + "attn_q.bias"), bk = T(p + "attn_k.bias"), bv = T(p + "attn_v.bias");
        std::vector<std::vector<double>> Q(n), K(n), V(n);  // un-rotated
        for (size_t t = 0; t < n; ++t) {
            auto h = ref_rmsnorm(xs[t], an, hp.rms_eps);
            Q[t] = ref_matvec(wq.data(), h, hp.n_head * hd);
            K[t] = ref_matvec(wk.data(), h, nkv);
            V[t] = ref_matvec(wv.data(), h, nkv);
            if (hp.qkv_bias)
                for (size_t i = 0; i < Q[t].size(); ++i) Q[t][i] += bq[i];
            if (hp.qkv_bias)
                for (size_t i = 0; i < K[t].size(); ++i) K[t][i] += bk[i], V[t][i] += bv[i];
        }
        for (size_t t = 0; t < n; ++t) {
            const std::vector<int64_t> kept = pat.kept(int64_t(t));
            std::vector<double> q = Q[t];
            rope(q, hp.n_head, hd, hp.n_rot, pat.qpos(int64_t(t), kept), hp.rope_freq_base, hp.rope_freq_scale, neox);
            std::vector<std::vector<double>> ks(kept.size()), vs(kept.size());
            for (size_t c = 0; c < kept.size(); ++c) {
                ks[c] = K[size_t(kept[c])];
                rope(ks[c], hp.n_head_kv, hd, hp.n_rot, pat.kpos(int64_t(t), kept, c), hp.rope_freq_base, hp.rope_freq_scale, neox);
                vs[c] = V[size_t(kept[c])];
            }
            if (pat.transform_kv) pat.transform_kv(int64_t(t), il, ks, vs);
            std::vector<double> att(size_t(hp.n_head * hd), 0.0);
            std::vector<std::vector<size_t>> sel(size_t(hp.n_head_kv));  // per KV head: indices into kept
            for (int64_t kh = 0; kh < hp.n_head_kv; ++kh) {
                if (pat.head_select) {
                    sel[size_t(kh)] = pat.head_select(int64_t(t), il, kh, q, ks);
                } else {
                    for (size_t c = 0; c < kept.size(); ++c) sel[size_t(kh)].push_back(c);
                }
            }
            for (int64_t h = 0; h < hp.n_head; ++h) {
                const int64_t kh = h / hp.n_gqa();
                const std::vector<size_t>& cs = sel[size_t(kh)];
                std::vector<double> sc(cs.size());
                double mx = -1e300;
                for (size_t c = 0; c < cs.size(); ++c) {
                    double acc = 0;
                    for (int64_t i = 0; i < hd; ++i) acc += q[size_t(h * hd + i)] * ks[cs[c]][size_t(kh * hd + i)];
                    sc[c] = acc / std::sqrt(double(hd));
                    mx = std::max(mx, sc[c]);
                }
                double sum = 0;
                for (auto& v : sc) sum += (v = std::exp(v - mx));
                for (size_t c = 0; c < cs.size(); ++c)
                    for (int64_t i = 0; i < hd; ++i) att[size_t(h * hd + i)] += sc[c] / sum * vs[cs[c]][size_t(kh * hd + i)];
            }
            auto o = ref_matvec(wo.data(), att, d);
            for (int64_t i = 0; i < d; ++i) xs[t][size_t(i)] += o[size_t(i)];
            auto h = ref_rmsnorm(xs[t], fn, hp.rms_eps);
            auto g = ref_matvec(wg.data(), h, hp.n_ff), u = ref_matvec(wu.data(), h, hp.n_ff);
            for (int64_t i = 0; i < hp.n_ff; ++i) g[size_t(i)] = g[size_t(i)] / (1.0 + std::exp(-g[size_t(i)])) * u[size_t(i)];
            auto dn = ref_matvec(wd.data(), g, d);
            for (int64_t i = 0; i < d; ++i) xs[t][size_t(i)] += dn[size_t(i)];
        }
    }
    auto on = T("output_norm.weight");
    auto out = f.find_tensor("output.weight") ? T("output.weight") : emb;
    std::vector<std::vector<double>> logits;
    for (size_t t = 0; t < n; ++t) logits.push_back(ref_matvec(out.data(), ref_rmsnorm(xs[t], on, hp.rms_eps), hp.n_vocab));
    return logits;
}

}  // namespace

namespace {

// KIVI's asymmetric b-bit quantizer over n values x[i · stride] (as an f32 cache stores them):
// m = min, a = (max - m) / (2^b - 1), both kept in f16 as stored; each value becomes
// a · clamp(round((x - m) / a), 0, 2^b - 1) + m (round half to even; a = 0: every value m).
void kivi_quantize(double* x, size_t n, size_t stride, int bits) {
    double mn = double(float(x[0])), mx = mn;
    for (size_t i = 1; i < n; ++i) mn = std::min(mn, double(float(x[i * stride]))), mx = std::max(mx, double(float(x[i * stride])));
    const double levels = double((1 << bits) - 1);
    const double m = double(f16_to_f32(f32_to_f16(float(std::clamp(mn, -65504.0, 65504.0)))));
    const double a = double(f16_to_f32(f32_to_f16(float(std::min((mx - m) / levels, 65504.0)))));
    for (size_t i = 0; i < n; ++i) {
        const double u = a > 0 ? std::clamp(std::nearbyint((double(float(x[i * stride])) - m) / a), 0.0, levels) : 0.0;
        x[i * stride] = a * u + m;
    }
}

}  // namespace

std::vector<std::vector<double>> reference_kivi_logits(const llama_model& m, const std::vector<int32_t>& tokens, int bits,
                                                       int64_t group, int64_t residual) {
    const model_hparams& hp = m.hparams();
    const int64_t hd = hp.head_dim, v_group = std::min(group, hd);
    attention_pattern pat;
    pat.kept = [](int64_t t) {
        std::vector<int64_t> k(size_t(t + 1));
        for (int64_t j = 0; j <= t; ++j) k[size_t(j)] = j;
        return k;
    };
    pat.qpos = [](int64_t t, const std::vector<int64_t>&) { return t; };
    pat.kpos = [](int64_t, const std::vector<int64_t>& kept, size_t c) { return kept[c]; };
    pat.transform_kv = [&](int64_t t, int64_t, std::vector<std::vector<double>>& ks, std::vector<std::vector<double>>& vs) {
        // Group g (tokens gG .. gG + G - 1) is read quantized once it lies R tokens behind t.
        for (int64_t g = 0; (g + 1) * group + residual <= t; ++g) {
            for (int64_t h = 0; h < hp.n_head_kv; ++h) {
                for (int64_t d = 0; d < hd; ++d) {  // keys: per channel over the group's tokens
                    std::vector<double> col(static_cast<size_t>(group));
                    for (int64_t i = 0; i < group; ++i) col[size_t(i)] = ks[size_t(g * group + i)][size_t(h * hd + d)];
                    kivi_quantize(col.data(), size_t(group), 1, bits);
                    for (int64_t i = 0; i < group; ++i) ks[size_t(g * group + i)][size_t(h * hd + d)] = col[size_t(i)];
                }
                for (int64_t i = 0; i < group; ++i)  // values: per token, per v_group channels
                    for (int64_t c = 0; c < hd; c += v_group)
                        kivi_quantize(vs[size_t(g * group + i)].data() + h * hd + c, size_t(v_group), 1, bits);
            }
        }
    };
    return pattern_logits(m, tokens, pat);
}

std::vector<std::vector<double>> reference_logits(const llama_model& m, const std::vector<int32_t>& tokens) {
    return reference_policy_logits(m, tokens, kv_policy{});
}

std::vector<int64_t> reference_kept(const kv_policy& p, int64_t t) {
    std::vector<int64_t> kept;
    for (int64_t j = 0; j <= t; ++j) {
        bool keep = true;
        if (p.kind == kv_policy_kind::window) keep = j > t - p.size;                    // the W most recent
        if (p.kind == kv_policy_kind::streaming) keep = j < p.sinks || j > t - p.size;  // S sinks + W most recent
        if (keep) kept.push_back(j);
    }
    return kept;
}

std::vector<std::vector<double>> reference_policy_logits(const llama_model& m, const std::vector<int32_t>& tokens,
                                                         const kv_policy& policy, ref_positions positions) {
    if (policy.kind == kv_policy_kind::recompute) {
        // Token t's logits: a fresh dense pass over the last W tokens at positions 0..W-1.
        std::vector<std::vector<double>> out;
        for (size_t t = 0; t < tokens.size(); ++t) {
            const size_t first = t + 1 > size_t(policy.size) ? t + 1 - size_t(policy.size) : 0;
            std::vector<int32_t> win(tokens.begin() + long(first), tokens.begin() + long(t) + 1);
            out.push_back(reference_logits(m, win).back());
        }
        return out;
    }
    attention_pattern pat;
    pat.kept = [&](int64_t t) { return reference_kept(policy, t); };
    if (policy.kind == kv_policy_kind::streaming && positions == ref_positions::in_cache) {
        // Positions are ranks within the cache: sinks 0..S-1, then the window; the query last.
        pat.qpos = [](int64_t, const std::vector<int64_t>& kept) { return int64_t(kept.size()) - 1; };
        pat.kpos = [](int64_t, const std::vector<int64_t>&, size_t c) { return int64_t(c); };
    } else {
        pat.qpos = [](int64_t t, const std::vector<int64_t>&) { return t; };
        pat.kpos = [](int64_t, const std::vector<int64_t>& kept, size_t c) { return kept[c]; };
    }
    return pattern_logits(m, tokens, pat);
}

std::vector<std::vector<double>> reference_quest_logits(const llama_model& m, const std::vector<int32_t>& tokens, int64_t budget,
                                                        int64_t page_size, int64_t prompt_len, std::vector<reference_quest_choice>* choices) {
    const model_hparams& hp = m.hparams();
    const int64_t hd = hp.head_dim, group = hp.n_gqa();
    const int64_t k = std::max<int64_t>(1, budget / page_size);
    attention_pattern pat;
    pat.kept = [](int64_t t) {
        std::vector<int64_t> all(size_t(t) + 1);
        for (int64_t j = 0; j <= t; ++j) all[size_t(j)] = j;
        return all;
    };
    pat.qpos = [](int64_t t, const std::vector<int64_t>&) { return t; };
    pat.kpos = [](int64_t, const std::vector<int64_t>& kept, size_t c) { return kept[c]; };
    pat.head_select = [&](int64_t t, int64_t layer, int64_t kh, const std::vector<double>& q,
                          const std::vector<std::vector<double>>& keys) {
        const int64_t n_pages = t / page_size + 1;  // pages of tokens 0..t; the newest holds t
        std::vector<size_t> all(size_t(t) + 1);
        for (int64_t j = 0; j <= t; ++j) all[size_t(j)] = size_t(j);
        // Prefill, the first two layers, and a sequence within the budget: dense.
        if (t < prompt_len || layer < 2 || n_pages <= k) return all;
        std::vector<double> score(size_t(n_pages - 1));
        for (int64_t p = 0; p + 1 < n_pages; ++p) {
            double best = -1e300;
            for (int64_t g = 0; g < group; ++g) {
                const int64_t h = kh * group + g;
                double s = 0;
                for (int64_t d = 0; d < hd; ++d) {
                    double mn = 1e300, mx = -1e300;  // the page's channel-wise key bounds
                    for (int64_t j = p * page_size; j < (p + 1) * page_size; ++j) {
                        mn = std::min(mn, keys[size_t(j)][size_t(kh * hd + d)]);
                        mx = std::max(mx, keys[size_t(j)][size_t(kh * hd + d)]);
                    }
                    // The bounds are stored in bf16, rounded outwards (kv_cache::key_bounds).
                    mn = cpu::bf16_to_f32(cpu::bf16_round_down(float(mn)));
                    mx = cpu::bf16_to_f32(cpu::bf16_round_up(float(mx)));
                    const double qd = q[size_t(h * hd + d)];
                    s += std::max(qd * mn, qd * mx);
                }
                best = std::max(best, s);
            }
            score[size_t(p)] = best;
        }
        std::vector<int32_t> order(score.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return score[size_t(a)] > score[size_t(b)]; });
        std::vector<int32_t> pages(order.begin(), order.begin() + (k - 1));
        std::sort(pages.begin(), pages.end());
        pages.push_back(int32_t(n_pages - 1));
        if (choices) choices->push_back({t, layer, kh, pages, score});
        std::vector<size_t> out;
        for (int32_t p : pages)
            for (int64_t j = p * page_size; j < std::min<int64_t>((p + 1) * page_size, t + 1); ++j) out.push_back(size_t(j));
        return out;
    };
    return pattern_logits(m, tokens, pat);
}

std::vector<std::vector<double>> reference_h2o_logits(const llama_model& m, const std::vector<int32_t>& tokens, int64_t heavy,
                                                      int64_t recent, const std::vector<int64_t>& chunk_ends,
                                                      std::vector<reference_h2o_kept>* kept_out) {
    const model_hparams& hp = m.hparams();
    const gguf_file& f = m.file();
    const int64_t d = hp.n_embd, hd = hp.head_dim, nkv = hp.n_head_kv * hd, group = hp.n_gqa();
    const bool neox = hp.rope == cpu::rope_layout::neox;
    auto T = [&](const std::string& n) { return dequant(f.find_tensor(n)); };
    auto emb = T("token_embd.weight");
    std::vector<std::vector<double>> xs;
    for (int32_t t : tokens) xs.emplace_back(emb.begin() + t * d, emb.begin() + (t + 1) * d);
    const size_t n = tokens.size();
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        auto an = T(p + "attn_norm.weight"), wq = T(p + "attn_q.weight"), wk = T(p + "attn_k.weight"),
             wv = T(p + "attn_v.weight"), wo = T(p + "attn_output.weight"), fn = T(p + "ffn_norm.weight"),
             wg = T(p + "ffn_gate.weight"), wu = T(p + "ffn_up.weight"), wd = T(p + "ffn_down.weight");
        std::vector<double> bq, bk, bv;
        if (hp.qkv_bias) bq = T(p + "attn_q.bias"), bk = T(p + "attn_k.bias"), bv = T(p + "attn_v.bias");
        std::vector<std::vector<double>> Q(n), K(n), V(n);  // Q and K rotated at the token's own position
        for (size_t t = 0; t < n; ++t) {
            auto h = ref_rmsnorm(xs[t], an, hp.rms_eps);
            Q[t] = ref_matvec(wq.data(), h, hp.n_head * hd);
            K[t] = ref_matvec(wk.data(), h, nkv);
            V[t] = ref_matvec(wv.data(), h, nkv);
            if (hp.qkv_bias)
                for (size_t i = 0; i < Q[t].size(); ++i) Q[t][i] += bq[i];
            if (hp.qkv_bias)
                for (size_t i = 0; i < K[t].size(); ++i) K[t][i] += bk[i], V[t][i] += bv[i];
            rope(Q[t], hp.n_head, hd, hp.n_rot, int64_t(t), hp.rope_freq_base, hp.rope_freq_scale, neox);
            rope(K[t], hp.n_head_kv, hd, hp.n_rot, int64_t(t), hp.rope_freq_base, hp.rope_freq_scale, neox);
        }
        // Per KV head: the tokens held and their accumulated scores (token -> score).
        std::vector<std::vector<int64_t>> held(size_t(hp.n_head_kv));
        std::vector<std::vector<double>> score(size_t(hp.n_head_kv), std::vector<double>(n, 0.0));
        int64_t start = 0;
        for (int64_t end : chunk_ends) {
            for (int64_t t = start; t < end; ++t) {
                std::vector<double> att(size_t(hp.n_head * hd), 0.0);
                for (int64_t kh = 0; kh < hp.n_head_kv; ++kh) {
                    std::vector<int64_t> vis = held[size_t(kh)];
                    for (int64_t j = start; j <= t; ++j) vis.push_back(j);
                    for (int64_t g = 0; g < group; ++g) {
                        const int64_t h = kh * group + g;
                        std::vector<double> sc(vis.size());
                        double mx = -1e300;
                        for (size_t c = 0; c < vis.size(); ++c) {
                            double acc = 0;
                            for (int64_t i = 0; i < hd; ++i) acc += Q[size_t(t)][size_t(h * hd + i)] * K[size_t(vis[c])][size_t(kh * hd + i)];
                            sc[c] = acc / std::sqrt(double(hd));
                            mx = std::max(mx, sc[c]);
                        }
                        double sum = 0;
                        for (auto& v : sc) sum += (v = std::exp(v - mx));
                        for (size_t c = 0; c < vis.size(); ++c) {
                            const double prob = sc[c] / sum;
                            score[size_t(kh)][size_t(vis[c])] += prob;  // the token's accumulated attention
                            for (int64_t i = 0; i < hd; ++i) att[size_t(h * hd + i)] += prob * V[size_t(vis[c])][size_t(kh * hd + i)];
                        }
                    }
                }
                auto o = ref_matvec(wo.data(), att, d);
                for (int64_t i = 0; i < d; ++i) xs[size_t(t)][size_t(i)] += o[size_t(i)];
                auto h = ref_rmsnorm(xs[size_t(t)], fn, hp.rms_eps);
                auto g = ref_matvec(wg.data(), h, hp.n_ff), u = ref_matvec(wu.data(), h, hp.n_ff);
                for (int64_t i = 0; i < hp.n_ff; ++i) g[size_t(i)] = g[size_t(i)] / (1.0 + std::exp(-g[size_t(i)])) * u[size_t(i)];
                auto dn = ref_matvec(wd.data(), g, d);
                for (int64_t i = 0; i < d; ++i) xs[size_t(t)][size_t(i)] += dn[size_t(i)];
            }
            // Eviction, per KV head on its own.
            for (int64_t kh = 0; kh < hp.n_head_kv; ++kh) {
                std::vector<int64_t>& hs = held[size_t(kh)];
                for (int64_t j = start; j < end; ++j) hs.push_back(j);
                if (int64_t(hs.size()) > heavy + recent) {
                    std::vector<int64_t> keep(hs.end() - recent, hs.end());  // hs is ascending: the R latest
                    std::vector<int64_t> rest(hs.begin(), hs.end() - recent);
                    const std::vector<double>& sc = score[size_t(kh)];
                    std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return sc[size_t(a)] > sc[size_t(b)]; });
                    keep.insert(keep.end(), rest.begin(), rest.begin() + heavy);
                    std::sort(keep.begin(), keep.end());
                    hs = keep;
                }
                if (kept_out) {
                    reference_h2o_kept k{end, il, kh, hs, {}};
                    for (int64_t j : hs) k.scores.push_back(score[size_t(kh)][size_t(j)]);
                    kept_out->push_back(std::move(k));
                }
            }
            start = end;
        }
    }
    auto on = T("output_norm.weight");
    auto out = f.find_tensor("output.weight") ? T("output.weight") : emb;
    std::vector<std::vector<double>> logits;
    for (size_t t = 0; t < n; ++t) logits.push_back(ref_matvec(out.data(), ref_rmsnorm(xs[t], on, hp.rms_eps), hp.n_vocab));
    return logits;
}

// ---- YOCO ------------------------------------------------------------------------------------

namespace {

// One token's attention output (n_head · head_dim): query q (rotated) against the keys and
// values of the tokens j with visible[j] (rotated keys, (n_kv_head · head_dim) each), query head
// h reading KV head h / (n_head / n_head_kv), scores scaled by 1/√head_dim, softmax over the
// visible tokens only.
std::vector<double> masked_attention(const model_hparams& hp, const std::vector<double>& q,
                                     const std::vector<std::vector<double>>& K, const std::vector<std::vector<double>>& V,
                                     const std::vector<bool>& visible) {
    const int64_t hd = hp.head_dim;
    std::vector<double> out(size_t(hp.n_head * hd), 0.0);
    for (int64_t h = 0; h < hp.n_head; ++h) {
        const int64_t kh = h / (hp.n_head / hp.n_head_kv);
        std::vector<double> p(K.size(), 0.0);
        double mx = -1e300;
        for (size_t j = 0; j < K.size(); ++j) {
            if (!visible[j]) continue;
            double acc = 0;
            for (int64_t i = 0; i < hd; ++i) acc += q[size_t(h * hd + i)] * K[j][size_t(kh * hd + i)];
            p[j] = acc / std::sqrt(double(hd));
            mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (size_t j = 0; j < K.size(); ++j) sum += visible[j] ? (p[j] = std::exp(p[j] - mx)) : (p[j] = 0.0);
        for (size_t j = 0; j < K.size(); ++j)
            if (visible[j])
                for (int64_t i = 0; i < hd; ++i) out[size_t(h * hd + i)] += p[j] / sum * V[j][size_t(kh * hd + i)];
    }
    return out;
}

}  // namespace

std::vector<std::vector<double>> reference_yoco_logits(const llama_model& m, const std::vector<int32_t>& tokens) {
    const model_hparams& hp = m.hparams();
    EXPECT_TRUE(hp.yoco()) << "reference_yoco_logits on a " << hp.arch << " model";
    const gguf_file& f = m.file();
    const int64_t d = hp.n_embd, hd = hp.head_dim, nq = hp.n_head * hd, nkv = hp.n_head_kv * hd;
    const int64_t L = hp.n_layer, Ls = hp.n_layer_self, W = hp.sliding_window;
    const bool neox = hp.rope == cpu::rope_layout::neox;
    auto T = [&](const std::string& name) {
        const gguf_tensor_info* t = f.find_tensor(name);
        EXPECT_NE(t, nullptr) << name;
        return t ? dequant(t) : std::vector<double>();
    };
    auto rot = [&](std::vector<double>& x, int64_t heads, int64_t pos) {
        rope(x, heads, hd, hp.n_rot, pos, hp.rope_freq_base, hp.rope_freq_scale, neox);
    };
    const size_t n = tokens.size();
    auto emb = T("token_embd.weight");
    std::vector<std::vector<double>> X;  // the residual stream, one row per token
    for (int32_t t : tokens) X.emplace_back(emb.begin() + int64_t(t) * d, emb.begin() + (int64_t(t) + 1) * d);

    // The masks: mask_self[i][j] = (i - W < j <= i), mask_cross[i][j] = (j <= i).
    std::vector<std::vector<bool>> mask_self(n, std::vector<bool>(n)), mask_cross(n, std::vector<bool>(n));
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j) {
            mask_cross[i][j] = j <= i;
            mask_self[i][j] = j <= i && int64_t(j) > int64_t(i) - W;
        }

    // X += FFN(X): SwiGLU with pre-norm ffn_norm.
    auto ffn = [&](const std::string& p) {
        auto fn = T(p + "ffn_norm.weight"), wg = T(p + "ffn_gate.weight"), wu = T(p + "ffn_up.weight"),
             wd = T(p + "ffn_down.weight");
        for (size_t t = 0; t < n; ++t) {
            auto h = ref_rmsnorm(X[t], fn, hp.rms_eps);
            auto g = ref_matvec(wg.data(), h, hp.n_ff), u = ref_matvec(wu.data(), h, hp.n_ff);
            for (int64_t i = 0; i < hp.n_ff; ++i) g[size_t(i)] = g[size_t(i)] / (1.0 + std::exp(-g[size_t(i)])) * u[size_t(i)];
            auto dn = ref_matvec(wd.data(), g, d);
            for (int64_t i = 0; i < d; ++i) X[t][size_t(i)] += dn[size_t(i)];
        }
    };

    // Self-decoder: Llama layers under the sliding-window mask, each with its own K/V.
    for (int64_t il = 0; il < Ls; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        auto an = T(p + "attn_norm.weight"), wq = T(p + "attn_q.weight"), wk = T(p + "attn_k.weight"),
             wv = T(p + "attn_v.weight"), wo = T(p + "attn_output.weight");
        std::vector<std::vector<double>> Q(n), K(n), V(n);
        for (size_t t = 0; t < n; ++t) {
            auto y = ref_rmsnorm(X[t], an, hp.rms_eps);
            Q[t] = ref_matvec(wq.data(), y, nq);
            K[t] = ref_matvec(wk.data(), y, nkv);
            V[t] = ref_matvec(wv.data(), y, nkv);
            rot(Q[t], hp.n_head, int64_t(t));
            rot(K[t], hp.n_head_kv, int64_t(t));
        }
        for (size_t t = 0; t < n; ++t) {
            auto o = ref_matvec(wo.data(), masked_attention(hp, Q[t], K, V, mask_self[t]), d);
            for (int64_t i = 0; i < d; ++i) X[t][size_t(i)] += o[size_t(i)];
        }
        ffn(p);
    }

    // The global K/V, once per token from the self-decoder's output.
    std::vector<std::vector<double>> Kg(n), Vg(n);
    {
        auto gn = T("global_norm.weight"), gk = T("global_k.weight"), gv = T("global_v.weight");
        for (size_t t = 0; t < n; ++t) {
            auto h = ref_rmsnorm(X[t], gn, hp.rms_eps);
            Kg[t] = ref_matvec(gk.data(), h, nkv);
            Vg[t] = ref_matvec(gv.data(), h, nkv);
            rot(Kg[t], hp.n_head_kv, int64_t(t));
        }
    }

    // Cross-decoder: queries only, causal attention over the global K/V.
    for (int64_t il = Ls; il < L; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        EXPECT_EQ(f.find_tensor(p + "attn_k.weight"), nullptr) << p;
        auto an = T(p + "attn_norm.weight"), wq = T(p + "attn_q.weight"), wo = T(p + "attn_output.weight");
        for (size_t t = 0; t < n; ++t) {
            auto q = ref_matvec(wq.data(), ref_rmsnorm(X[t], an, hp.rms_eps), nq);
            rot(q, hp.n_head, int64_t(t));
            auto o = ref_matvec(wo.data(), masked_attention(hp, q, Kg, Vg, mask_cross[t]), d);
            for (int64_t i = 0; i < d; ++i) X[t][size_t(i)] += o[size_t(i)];
        }
        ffn(p);
    }

    auto on = T("output_norm.weight");
    auto out = f.find_tensor("output.weight") ? T("output.weight") : emb;
    std::vector<std::vector<double>> logits;
    for (size_t t = 0; t < n; ++t) logits.push_back(ref_matvec(out.data(), ref_rmsnorm(X[t], on, hp.rms_eps), hp.n_vocab));
    return logits;
}

// ---- synthetic models ----------------------------------------------------------------------


std::string write_synth(const synth_spec& s, const std::string& name) {
    gguf_writer w;
    const bool yoco = s.n_layer_self > 0;
    const std::string arch = yoco ? "yoco" : s.arch;
    const std::string a = arch + ".";
    w.set_string("general.architecture", arch);
    w.set_u32(a + "context_length", 256);
    w.set_u32(a + "embedding_length", uint32_t(s.n_embd));
    w.set_u32(a + "block_count", uint32_t(s.n_layer));
    w.set_u32(a + "feed_forward_length", uint32_t(s.n_ff));
    w.set_u32(a + "attention.head_count", uint32_t(s.n_head));
    w.set_u32(a + "attention.head_count_kv", uint32_t(s.n_head_kv));
    w.set_u32(a + "rope.dimension_count", uint32_t(s.n_rot));
    w.set_f32(a + "rope.freq_base", s.rope_base);
    w.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    if (yoco) {
        w.set_u32(a + "self_decoder_block_count", uint32_t(s.n_layer_self));
        w.set_u32(a + "sliding_window", uint32_t(s.window));
    }
    uint64_t seed = 1;
    const int64_t hd = s.n_embd / s.n_head;
    weight_format format{s.wtype, false};
    if (!s.mix.empty()) {
        EXPECT_TRUE(weight_format_from_name(s.mix, &format)) << s.mix;
    }
    auto add = [&](const std::string& n, std::vector<int64_t> ne, float scale, float offset, bool matrix) {
        int64_t count = 1;
        for (auto x : ne) count *= x;
        // Wider test models keep the default's activation scale (weights ∝ 1/√n_embd), so the
        // logits stay as sensitive to weight error as at n_embd = 64.
        if (matrix) scale *= float(std::sqrt(64.0 / double(s.n_embd)));
        auto v = test::random_floats(count, seed++, scale);
        for (auto& x : v) x += offset;
        dtype t = !matrix ? dtype::f32 : s.mix.empty() ? s.wtype : weight_dtype_for(n, 2, ne[0], format, s.n_layer, !s.tied);
        std::vector<uint8_t> bytes(dtype_row_bytes(t, ne[0]) * size_t(count / ne[0]));
        for (int64_t r = 0; r < count / ne[0]; ++r)
            ASSERT_TRUE(quantize_row(t, v.data() + r * ne[0], bytes.data() + size_t(r) * dtype_row_bytes(t, ne[0]), ne[0]))
                << n << " in " << dtype_name(t);
        ASSERT_TRUE(w.add_tensor_data(n, t, ne, bytes.data(), bytes.size()));
    };
    add("token_embd.weight", {s.n_embd, s.n_vocab}, 1.0f, 0, true);
    for (int64_t l = 0; l < s.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        add(p + "attn_norm.weight", {s.n_embd}, 0.2f, 1.0f, false);
        add(p + "attn_q.weight", {s.n_embd, s.n_head * hd}, 0.3f, 0, true);
        if (!yoco || l < s.n_layer_self) {  // YOCO's cross-decoder layers have no K/V projections
            add(p + "attn_k.weight", {s.n_embd, s.n_head_kv * hd}, 0.3f, 0, true);
            add(p + "attn_v.weight", {s.n_embd, s.n_head_kv * hd}, 0.3f, 0, true);
        }
        if (arch == "qwen2") {
            add(p + "attn_q.bias", {s.n_head * hd}, 0.2f, 0, false);
            add(p + "attn_k.bias", {s.n_head_kv * hd}, 0.2f, 0, false);
            add(p + "attn_v.bias", {s.n_head_kv * hd}, 0.2f, 0, false);
        }
        add(p + "attn_output.weight", {s.n_head * hd, s.n_embd}, 0.2f, 0, true);
        add(p + "ffn_norm.weight", {s.n_embd}, 0.2f, 1.0f, false);
        add(p + "ffn_gate.weight", {s.n_embd, s.n_ff}, 0.3f, 0, true);
        add(p + "ffn_up.weight", {s.n_embd, s.n_ff}, 0.3f, 0, true);
        add(p + "ffn_down.weight", {s.n_ff, s.n_embd}, 0.2f, 0, true);
    }
    if (yoco) {
        add("global_norm.weight", {s.n_embd}, 0.2f, 1.0f, false);
        add("global_k.weight", {s.n_embd, s.n_head_kv * hd}, 0.3f, 0, true);
        add("global_v.weight", {s.n_embd, s.n_head_kv * hd}, 0.3f, 0, true);
    }
    add("output_norm.weight", {s.n_embd}, 0.2f, 1.0f, false);
    if (!s.tied) add("output.weight", {s.n_embd, s.n_vocab}, 0.3f, 0, true);
    std::string path = test::temp_dir() + "/" + name + ".gguf";
    EXPECT_TRUE(w.write(path));
    return path;
}

std::vector<int32_t> some_tokens(int64_t n, int64_t n_vocab, uint64_t seed) {
    std::mt19937 rng{static_cast<unsigned>(seed)};
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = int32_t(rng() % uint64_t(n_vocab));
    return t;
}

}  // namespace kvs::test
