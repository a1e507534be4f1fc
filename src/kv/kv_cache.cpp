#include "kv/kv_cache.h"

#include "kernels/cpu/kv_quant.h"
#include "kernels/cpu/quest.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace kvs {

bool kv_type_from_name(std::string_view name, dtype* out) {
    dtype t;
    if (!dtype_from_name(name, &t) || !cpu::kv_page_layout::supported(t)) return false;
    *out = t;
    return true;
}


status kivi_size_pools(kv_config& c, int64_t budget_bytes, int32_t max_seqs, int64_t n_ctx, int64_t step_tokens) {
    const int64_t ps = c.page_size;
    const int64_t full_bytes = int64_t(c.page_bytes()), packed_bytes = int64_t(c.packed_page_bytes());
    if (full_bytes <= 0 || packed_bytes <= 0) return status::error("kv cache: KIVI needs a geometry");
    const int64_t per_seq_full = (c.kivi_residual + ps - 1) / ps + 2;
    const int64_t transient = (step_tokens + ps - 1) / ps + 8;
    const int64_t per_seq_bytes = per_seq_full * full_bytes + kv_cache::pages_for(n_ctx, int32_t(ps)) * packed_bytes;
    const int64_t n_seqs = std::min<int64_t>(std::max(max_seqs, 1), (budget_bytes - transient * full_bytes) / per_seq_bytes);
    if (n_seqs < 1)
        return status::error(strfmt("kv cache: %.1f MiB of KV memory do not hold one KIVI sequence of %lld tokens (%.1f MiB with its residual)",
                                    double(budget_bytes) / 1048576.0, (long long)n_ctx,
                                    double(per_seq_bytes + transient * full_bytes) / 1048576.0));
    const int64_t n_full = n_seqs * per_seq_full + transient;
    const int64_t n_packed = (budget_bytes - n_full * full_bytes) / packed_bytes;
    if (n_full + n_packed > (int64_t(1) << 30)) return status::error("kv cache: the pool is too large");
    c.n_pages = int32_t(n_full);
    c.n_packed_pages = int32_t(n_packed);
    return status::ok();
}

kv_cache::kv_cache(const kv_config& config)
    : cfg_(config), pool_(config.n_pages, config.kivi_bits ? config.n_packed_pages : 0), layout_(config.layout()),
      packed_layout_(config.packed_layout()) {
    if (!cfg_.kivi_bits) cfg_.n_packed_pages = 0;
    k_layer_bytes_ = size_t(cfg_.n_pages) * layout_.k_page_bytes();
    v_layer_bytes_ = cfg_.keys_only ? 0 : size_t(cfg_.n_pages) * layout_.v_page_bytes();
    if (cfg_.kivi_bits) {
        kp_layer_bytes_ = size_t(cfg_.n_packed_pages) * packed_layout_.k_page_bytes();
        vp_layer_bytes_ = size_t(cfg_.n_packed_pages) * packed_layout_.v_page_bytes();
    }
}

result<std::unique_ptr<kv_cache>> kv_cache::create(const kv_config& c) {
    if (c.n_layer <= 0 || c.n_kv_head <= 0 || c.head_dim <= 0)
        return status::error("kv cache: layers, KV heads and head size must be positive");
    if (c.page_size <= 0 || c.page_size > 4096)
        return status::error(strfmt("kv cache: page size %d is out of range (1..4096)", c.page_size));
    if (c.n_pages <= 0) return status::error("kv cache: the pool needs at least one page");
    if (!cpu::kv_page_layout::supported(c.type))
        return status::error(strfmt("kv cache: storage format %s is not supported (f32, f16, bf16, q8_0, q4_0, q4_1)", dtype_name(c.type)));
    if (c.v_type && !cpu::kv_page_layout::supported(*c.v_type))
        return status::error(strfmt("kv cache: V storage format %s is not supported (f32, f16, bf16, q8_0, q4_0, q4_1)", dtype_name(*c.v_type)));
    if (*c.layout().head_dim_problem())
        return status::error(strfmt("kv cache: head_dim %lld cannot be stored as %s: %s", (long long)c.head_dim, dtype_name(c.type),
                                    c.layout().head_dim_problem()));
    if (c.keys_only && (c.v_type || c.kivi_bits))
        return status::error("kv cache: a keys-only group (one entry read as K and V) has no separate V format and no KIVI");
    if (c.kivi_bits) {
        if (c.kivi_bits != 2 && c.kivi_bits != 4) return status::error(strfmt("kv cache: KIVI takes 2 or 4 bits, not %d", c.kivi_bits));
        if (c.v_type) return status::error("kv cache: KIVI quantizes K and V alike (no separate V format)");
        if (cpu::kv_page_layout::quantized(c.type)) return status::error("kv cache: KIVI's residual pages need a float format (f32, f16, bf16)");
        if (c.kivi_residual < 0) return status::error("kv cache: the KIVI residual cannot be negative");
        if (c.n_packed_pages < 0) return status::error("kv cache: negative packed page count");
        if (c.key_bounds || c.token_scores)
            return status::error("kv cache: KIVI pages carry no key bounds or token scores (Quest and H2O do not combine with KIVI)");
        if (*c.packed_layout().head_dim_problem())
            return status::error(strfmt("kv cache: head_dim %lld cannot be stored as KIVI groups of %d: %s", (long long)c.head_dim,
                                        c.page_size, c.packed_layout().head_dim_problem()));
        if (int64_t(c.n_pages) + c.n_packed_pages > (int64_t(1) << 30)) return status::error("kv cache: the pool is too large");
    }
    std::unique_ptr<kv_cache> kv(new kv_cache(c));
    // Zeroed (the OS hands out zero pages lazily), so never-written pad slots that a kernel may
    // load beside real ones hold finite values; on huge pages where possible (huge_buffer.h).
    const size_t nk = size_t(c.n_layer) * kv->k_layer_bytes_, nv = size_t(c.n_layer) * kv->v_layer_bytes_;
    kv->k_ = make_huge_buffer(nk);
    if (nv) kv->v_ = make_huge_buffer(nv);
    if (!kv->k_ || (nv && !kv->v_))
        return status::error(strfmt("kv cache: cannot allocate %.1f MiB for %d pages", double(nk + nv) / 1048576.0, c.n_pages));
    if (c.kivi_bits && c.n_packed_pages > 0) {
        const size_t npk = size_t(c.n_layer) * kv->kp_layer_bytes_, npv = size_t(c.n_layer) * kv->vp_layer_bytes_;
        kv->kp_ = make_huge_buffer(npk);
        kv->vp_ = make_huge_buffer(npv);
        if (!kv->kp_ || !kv->vp_)
            return status::error(strfmt("kv cache: cannot allocate %.1f MiB for %d packed pages", double(npk + npv) / 1048576.0,
                                        c.n_packed_pages));
    }
    if (c.key_bounds) {
        const size_t nb = size_t(c.n_layer) * size_t(c.n_kv_head) * size_t(c.n_pages) * kv->bounds_page_stride();
        kv->bounds_.reset(new (std::nothrow) uint16_t[nb]());
        if (!kv->bounds_) return status::error(strfmt("kv cache: cannot allocate %.1f MiB of key bounds", double(nb * 2) / 1048576.0));
    }
    if (c.token_scores) {
        const size_t nm = size_t(c.n_layer) * size_t(c.n_kv_head) * size_t(c.n_pages) * size_t(c.page_size);
        kv->scores_.reset(new (std::nothrow) float[nm]());
        kv->positions_.reset(new (std::nothrow) int32_t[nm]());
        if (!kv->scores_ || !kv->positions_)
            return status::error(strfmt("kv cache: cannot allocate %.1f MiB of token scores", double(nm * 8) / 1048576.0));
    }
    return kv;
}

int32_t kv_cache::seq_add() {
    for (size_t s = 0; s < seqs_.size(); ++s)
        if (!seqs_[s].live) {
            seqs_[s].live = true;
            return int32_t(s);
        }
    seqs_.push_back({true, {}, 0, 0, {}, {}});
    return int32_t(seqs_.size() - 1);
}

bool kv_cache::seq_exists(int32_t seq) const {
    return seq >= 0 && size_t(seq) < seqs_.size() && seqs_[size_t(seq)].live;
}

void kv_cache::seq_remove(int32_t seq) {
    seq_state& s = seqs_[size_t(seq)];
    for (auto it = s.twins.rbegin(); it != s.twins.rend(); ++it)
        if (*it >= 0) pool_.unref(*it);
    s.twins.clear();
    for (auto it = s.pages.rbegin(); it != s.pages.rend(); ++it) pool_.unref(*it);
    s.pages.clear();
    s.live = false;
    s.n_pinned = 0;
    s.n_dropped = 0;
    s.policy = kv_policy{};
}

void kv_cache::seq_set_policy(int32_t seq, const kv_policy& policy) {
    seq_state& s = seqs_[size_t(seq)];
    s.policy = policy;
    s.n_pinned = policy.kind == kv_policy_kind::streaming ? pages_for(policy.sinks, cfg_.page_size) : 0;
}

int32_t kv_cache::seq_trim(int32_t seq, int64_t n_computed) {
    const kv_policy& p = seqs_[size_t(seq)].policy;
    if (!p.slides()) return 0;
    // The next query (token n_computed) reads its window [n_computed - W + 1, n_computed].
    return seq_drop_before(seq, n_computed - p.size + 1);
}

int32_t kv_cache::policy_page_bound(const kv_policy& p, int64_t n_chunk, int32_t page_size) {
    if (!p.slides()) return 0;
    const int64_t ps = page_size;
    const int64_t sinks = p.kind == kv_policy_kind::streaming ? pages_for(p.sinks, page_size) : 0;
    return int32_t(sinks + (p.size + n_chunk - 1 + ps - 1 + ps - 1) / ps);
}

int32_t kv_cache::pages_to_reserve(int32_t seq, int64_t n_slots) const {
    const seq_state& s = seqs_[size_t(seq)];
    return std::max<int32_t>(0, int32_t(pages_for(n_slots, cfg_.page_size) - s.n_dropped - int64_t(s.pages.size())));
}

int32_t kv_cache::packed_to_reserve(int32_t seq, int64_t n_slots) const {
    if (!cfg_.kivi_bits) return 0;
    const seq_state& s = seqs_[size_t(seq)];
    const int64_t target = kivi_packed_pages(n_slots);
    const int64_t n_table = int64_t(s.pages.size()) + pages_to_reserve(seq, n_slots);
    int32_t n = 0;
    for (int64_t i = 0; i < n_table; ++i) {
        if (logical_page(seq, i) >= target) break;
        if (i < int64_t(s.pages.size()) && (pool_.is_packed(s.pages[size_t(i)]) || kivi_twin(seq, size_t(i)) >= 0)) continue;
        ++n;
    }
    return n;
}

bool kv_cache::can_reserve(int32_t seq, int64_t n_slots) const {
    return pool_.can_allocate(pages_to_reserve(seq, n_slots)) && pool_.can_allocate_packed(packed_to_reserve(seq, n_slots));
}

bool kv_cache::seq_reserve(int32_t seq, int64_t n_slots) {
    const int32_t need = pages_to_reserve(seq, n_slots), need_packed = packed_to_reserve(seq, n_slots);
    if (!pool_.can_allocate(need) || !pool_.can_allocate_packed(need_packed)) return false;
    seq_state& s = seqs_[size_t(seq)];
    pool_.allocate(need, s.pages);
    if (need_packed == 0) return true;
    // Twins for the full pages this step ages out (KIVI).
    const int64_t target = kivi_packed_pages(n_slots);
    s.twins.resize(s.pages.size(), -1);
    std::vector<int32_t> got;
    pool_.allocate_packed(need_packed, got);
    size_t k = 0;
    for (size_t i = 0; i < s.pages.size() && logical_page(seq, int64_t(i)) < target; ++i)
        if (!pool_.is_packed(s.pages[i]) && s.twins[i] < 0) s.twins[i] = got[k++];
    return true;
}

void kv_cache::kivi_pack_layer(int64_t layer, int32_t seq) {
    seq_state& s = seqs_[size_t(seq)];
    const int64_t ps = cfg_.page_size, hd = cfg_.head_dim;
    std::vector<float> kf(size_t(ps * hd)), vf(size_t(ps * hd));  // (page_size, head_dim)
    for (size_t i = 0; i < s.twins.size(); ++i) {
        const int32_t twin = s.twins[i];
        if (twin < 0) continue;
        const int32_t full = s.pages[i];
        for (int64_t h = 0; h < cfg_.n_kv_head; ++h) {
            const uint8_t* kb = k_block(layer, full, h);
            const uint8_t* vb = v_block(layer, full, h);
            for (int64_t t = 0; t < ps; ++t)
                for (int64_t d = 0; d < hd; ++d) {
                    kf[size_t(t * hd + d)] = cpu::kv_load_k(layout_, kb, t, d);
                    vf[size_t(t * hd + d)] = cpu::kv_load_v(layout_, vb, t, d);
                }
            cpu::kivi_quantize_k(packed_layout_, kf.data(), packed_k_block(layer, twin, h));
            cpu::kivi_quantize_v(packed_layout_, vf.data(), packed_v_block(layer, twin, h));
        }
    }
}

void kv_cache::kivi_commit(int32_t seq) {
    seq_state& s = seqs_[size_t(seq)];
    for (size_t i = 0; i < s.twins.size(); ++i) {
        if (s.twins[i] < 0) continue;
        pool_.unref(s.pages[i]);
        s.pages[i] = s.twins[i];
    }
    s.twins.clear();
}

int64_t kv_cache::kivi_usable_prefix(const int32_t* pages, int64_t n) const {
    if (!cfg_.kivi_bits) return n;
    // With k pages cached (k · page_size slots), the next query reads logical pages
    // [kivi_packed_pages(k · page_size), k) in full precision: they must be full pages.
    for (int64_t k = n; k > 0; --k) {
        bool ok = true;
        for (int64_t lp = kivi_packed_pages(k * cfg_.page_size); lp < k && ok; ++lp) ok = !pool_.is_packed(pages[lp]);
        if (ok) return k;
    }
    return 0;
}

bool kv_cache::seq_holds(int32_t seq, int64_t slot) const {
    const seq_state& s = seqs_[size_t(seq)];
    const int64_t lp = slot / cfg_.page_size;
    return slot >= 0 && slot < seq_capacity(seq) && (lp < s.n_pinned || lp >= s.n_pinned + s.n_dropped);
}

int32_t kv_cache::seq_drop_before(int32_t seq, int64_t slot) {
    seq_state& s = seqs_[size_t(seq)];
    // Logical pages [n_pinned + n_dropped, slot / page_size) lie wholly below `slot`.
    const int64_t first = s.n_pinned + s.n_dropped;
    const int64_t end = std::min<int64_t>(slot / cfg_.page_size, int64_t(s.pages.size()) + s.n_dropped);
    if (end <= first) return 0;
    const int32_t n = int32_t(end - first);
    const auto begin_it = s.pages.begin() + s.n_pinned;
    for (auto it = begin_it; it != begin_it + n; ++it) pool_.unref(*it);
    s.pages.erase(begin_it, begin_it + n);
    if (!s.twins.empty()) {
        const auto tw = s.twins.begin() + s.n_pinned;
        for (auto it = tw; it != tw + n; ++it)
            if (*it >= 0) pool_.unref(*it);
        s.twins.erase(tw, tw + n);
    }
    s.n_dropped += n;
    return n;
}

void kv_cache::copy_page(int32_t dst, int32_t src) {
    const size_t kb = layout_.k_head_bytes(), vb = layout_.v_head_bytes();
    for (int64_t l = 0; l < cfg_.n_layer; ++l)
        for (int64_t h = 0; h < cfg_.n_kv_head; ++h) {
            std::memcpy(k_block(l, dst, h), k_block(l, src, h), kb);
            std::memcpy(v_block(l, dst, h), v_block(l, src, h), vb);
            if (bounds_)
                std::memcpy(bounds_.get() + bounds_offset(l, dst, h), key_bounds(l, src, h), bounds_page_stride() * sizeof(uint16_t));
            if (scores_) {
                std::memcpy(scores_.get() + meta_offset(l, dst, h), scores_.get() + meta_offset(l, src, h), size_t(cfg_.page_size) * sizeof(float));
                std::memcpy(positions_.get() + meta_offset(l, dst, h), positions_.get() + meta_offset(l, src, h),
                            size_t(cfg_.page_size) * sizeof(int32_t));
            }
        }
}

void kv_cache::move_row(int64_t layer, int64_t head, int32_t dst_page, int64_t dst_row, int32_t src_page, int64_t src_row) {
    cpu::kv_copy_row(layout_, k_block(layer, dst_page, head), v_block(layer, dst_page, head), dst_row, k_block(layer, src_page, head),
                     v_block(layer, src_page, head), src_row);
    if (!scores_) return;
    scores_[meta_offset(layer, dst_page, head) + size_t(dst_row)] = scores_[meta_offset(layer, src_page, head) + size_t(src_row)];
    positions_[meta_offset(layer, dst_page, head) + size_t(dst_row)] = positions_[meta_offset(layer, src_page, head) + size_t(src_row)];
}

int32_t kv_cache::seq_truncate(int32_t seq, int64_t n_slots) {
    seq_state& s = seqs_[size_t(seq)];
    const size_t keep = size_t(pages_for(std::max<int64_t>(n_slots, 0), cfg_.page_size));
    if (s.n_dropped > 0 || s.pages.size() <= keep) return 0;
    const int32_t n = int32_t(s.pages.size() - keep);
    while (s.pages.size() > keep) {
        pool_.unref(s.pages.back());
        s.pages.pop_back();
    }
    return n;
}

int32_t kv_cache::seq_rollback(int32_t seq, int64_t n_slots) {
    seq_state& s = seqs_[size_t(seq)];
    const int64_t keep = pages_for(std::max<int64_t>(n_slots, 0), cfg_.page_size);  // logical pages kept
    int32_t n = 0;
    while (int64_t(s.pages.size()) > s.n_pinned && int64_t(s.pages.size()) + s.n_dropped > keep) {
        pool_.unref(s.pages.back());
        s.pages.pop_back();
        ++n;
    }
    return n;
}

bool kv_cache::seq_prepare_write(int32_t seq, int64_t begin, int64_t end) {
    seq_state& s = seqs_[size_t(seq)];
    if (end <= begin) return true;
    if (!seq_holds(seq, begin) || !seq_holds(seq, end - 1)) return false;
    const int64_t first = table_slot(seq, begin) / cfg_.page_size, last = table_slot(seq, end - 1) / cfg_.page_size;
    int32_t n_shared = 0;
    for (int64_t p = first; p <= last; ++p) {
        if (pool_.is_packed(s.pages[size_t(p)])) return false;  // packed pages are never written
        n_shared += pool_.ref_count(s.pages[size_t(p)]) > 1;
    }
    if (!pool_.can_allocate(n_shared)) return false;
    for (int64_t p = first; p <= last; ++p) {
        int32_t old = s.pages[size_t(p)];
        if (pool_.ref_count(old) <= 1) continue;
        std::vector<int32_t> fresh;
        pool_.allocate(1, fresh);
        copy_page(fresh[0], old);
        pool_.unref(old);
        s.pages[size_t(p)] = fresh[0];
    }
    return true;
}

int32_t kv_cache::seq_fork(int32_t src) {
    int32_t dst = seq_add();
    seqs_[size_t(dst)] = seqs_[size_t(src)];
    seqs_[size_t(dst)].twins.clear();  // twins live within one step; forks happen between steps
    for (int32_t p : seqs_[size_t(dst)].pages) pool_.ref(p);
    return dst;
}

void kv_cache::seq_attach(int32_t seq, const std::vector<int32_t>& pages) {
    seq_state& s = seqs_[size_t(seq)];
    for (int32_t p : pages) {
        pool_.ref(p);
        s.pages.push_back(p);
    }
}

void kv_cache::write(int64_t layer, int32_t seq, int64_t slot, const float* k, const float* v, int32_t position) {
    const int32_t page = page_of(seq, slot);
    const int64_t row = slot % cfg_.page_size;
    cpu::kv_store_row(layout_, k_block(layer, page, 0), v_block(layer, page, 0), size_t(cfg_.n_pages) * layout_.k_head_bytes(),
                      size_t(cfg_.n_pages) * layout_.v_head_bytes(), row, k, v);
    if (scores_)
        for (int64_t h = 0; h < cfg_.n_kv_head; ++h) {
            scores_[meta_offset(layer, page, h) + size_t(row)] = 0.0f;
            positions_[meta_offset(layer, page, h) + size_t(row)] = position;
        }
    if (!bounds_) return;
    const int64_t hd = cfg_.head_dim;
    for (int64_t h = 0; h < cfg_.n_kv_head; ++h) {
        uint16_t* b = bounds_.get() + bounds_offset(layer, page, h);  // (min, max) x head_dim, bf16
        const uint8_t* block = k_block(layer, page, h);
        for (int64_t d = 0; d < hd; ++d) {
            const float x = cpu::kv_load_k(layout_, block, row, d);  // as the kernel reads it
            // Outward rounding keeps the bounds valid; a bound already in bf16 stays exact.
            const float lo = row == 0 ? x : std::min(cpu::bf16_to_f32(b[d]), x);
            const float hi = row == 0 ? x : std::max(cpu::bf16_to_f32(b[hd + d]), x);
            b[d] = cpu::bf16_round_down(lo);
            b[hd + d] = cpu::bf16_round_up(hi);
        }
    }
}

status kv_cache::check_integrity(const std::vector<int32_t>& other_owners) const {
    KVS_TRY(pool_.check_integrity());
    const int32_t n_ids = pool_.n_pages();
    std::vector<int32_t> owners(static_cast<size_t>(n_ids), 0);
    for (int32_t p : other_owners) {
        if (p < 0 || p >= n_ids) return status::error(strfmt("invalid page %d held outside the tables", p));
        ++owners[size_t(p)];
    }
    for (size_t s = 0; s < seqs_.size(); ++s) {
        if (!seqs_[s].live && !seqs_[s].pages.empty())
            return status::error(strfmt("removed sequence %zu still holds pages", s));
        if (seqs_[s].n_pinned < 0 || seqs_[s].n_dropped < 0 ||
            (seqs_[s].n_dropped > 0 && size_t(seqs_[s].n_pinned) > seqs_[s].pages.size()))
            return status::error(strfmt("sequence %zu: %d pinned and %lld dropped pages do not fit its table of %zu", s,
                                        seqs_[s].n_pinned, (long long)seqs_[s].n_dropped, seqs_[s].pages.size()));
        for (int32_t p : seqs_[s].pages) {
            if (p < 0 || p >= n_ids) return status::error(strfmt("sequence %zu holds invalid page %d", s, p));
            ++owners[size_t(p)];
        }
        if (!seqs_[s].twins.empty() && seqs_[s].twins.size() != seqs_[s].pages.size())
            return status::error(strfmt("sequence %zu: %zu twins for %zu pages", s, seqs_[s].twins.size(), seqs_[s].pages.size()));
        for (size_t i = 0; i < seqs_[s].twins.size(); ++i) {
            const int32_t p = seqs_[s].twins[i];
            if (p < 0) continue;
            if (p >= n_ids || !pool_.is_packed(p) || pool_.is_packed(seqs_[s].pages[i]))
                return status::error(strfmt("sequence %zu has invalid twin page %d", s, p));
            ++owners[size_t(p)];
        }
    }
    for (int32_t p = 0; p < n_ids; ++p)
        if (owners[size_t(p)] != pool_.ref_count(p))
            return status::error(strfmt("page %d: ref count %d but %d owners hold it", p, pool_.ref_count(p), owners[size_t(p)]));
    return status::ok();
}

}  // namespace kvs
