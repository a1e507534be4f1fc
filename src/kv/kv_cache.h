// The KV cache of one KV group (all layers of a Llama-family model): page storage for every
// layer plus one page table per sequence (kv-design.md). A page id indexes the same slot
// range in every layer, so one table serves all layers.
//
// Storage per layer, K and V alike: (n_kv_head, n_pages, block) in the cache's format (f32,
// f16, bf16 or per-group quantized q8_0/q4_0/q4_1 with the scales inside the block, so pages
// copy, share and move as bytes; kv_config::type), a block being one KV head's rows of one page as
// cpu::kv_page_layout describes. Head-major over the pool: one KV head's keys for a page are
// contiguous, and so are its blocks of consecutive pages, so the attention kernel (one task
// per KV head) streams one sequential run per head instead of a short run out of every page.
// Slot s of a sequence lives in row s % page_size of its logical page s / page_size. Keys are
// stored already rotated (RoPE applied at write time at the token's position).
//
// Sliding tables (window and StreamingLLM policies): a sequence may drop the pages at the
// front of its table once no future query reads them (seq_drop_before); the first n_pinned
// pages (StreamingLLM's sinks) are never dropped. Logical page lp then sits at table index
// lp (lp < n_pinned) or lp - n_dropped, and a slot's *table slot* — its index in the run of
// pages handed to the attention kernel — is table_index · page_size + row. Dense sequences
// never drop, so their logical and table slots are equal.
//
// KIVI (kv_config::kivi_bits; Liu et al., 2024): the pool holds two classes of pages
// (page_pool.h): full-precision pages of `type`, where every token is written, and packed
// pages (kv_page_layout's KIVI blocks, one quantization group of page_size tokens each). A
// query at logical slot L reads logical page lp packed iff (lp + 1) · page_size + R <= L (R =
// kivi_residual): the newest R tokens and the unfinished group stay in full precision, older
// groups are read quantized — whatever the chunking of the sequence, so prefill chunks,
// decode, preemption and the prefix cache read the same values. A table is [packed pages,
// then full pages]. seq_reserve(seq, n) also takes a packed *twin* for every full page that
// a step reaching n slots ages out; the forward pass quantizes the twins layer by layer
// (kivi_pack_layer, after the layer's K/V are written: rows of the same step may read a page
// in either form) and kivi_commit swaps them into the table when the step is done, freeing
// the full pages (a full page shared with the prefix cache stays there).
//
// Contract
//  - Single owner: mutated by one thread at a time (the forward pass writes rows of pages
//    the caller has made exclusive with seq_prepare_write; distinct rows may be written by
//    several threads at once).
//  - seq_reserve / seq_prepare_write / seq_fork are all-or-nothing: on false nothing changed.
//  - A page shared by several sequences (ref > 1) is never written: seq_prepare_write copies
//    it first (copy-on-write).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <string_view>

#include "core/dtype.h"
#include "core/huge_buffer.h"
#include "core/status.h"
#include "kernels/cpu/attention.h"
#include "kv/kv_policy.h"
#include "kv/page_pool.h"

namespace kvs {

// The KV storage format when none is asked for: bf16 — half the bytes of f32, the range of
// f32, and on AVX-512 BF16 CPUs both attention products run on vdpbf16ps (docs/design.md).
inline constexpr dtype kv_default_type = dtype::bf16;
// Parses a KV format name: "f32", "f16", "bf16", "q8_0", "q4_0" or "q4_1" (case-insensitive);
// false if unknown.
bool kv_type_from_name(std::string_view name, dtype* out);

// KIVI's settings as the command line and the engine take them (kv_config carries them into
// the cache): bits 0 (off), 2 or 4; group G tokens (the page size of a KIVI cache) and the
// residual R of newest tokens kept in full precision.
struct kivi_config {
    int32_t bits = 0;
    int32_t group = 32;
    int32_t residual = 128;
};

struct kv_config {
    int64_t n_layer = 0;
    int64_t n_kv_head = 0;
    int64_t head_dim = 0;
    int32_t page_size = 16;          // tokens per page
    int32_t n_pages = 0;             // pages in the pool
    dtype type = kv_default_type;    // storage format of K, and of V unless v_type is set (f32, f16, bf16, q8_0, q4_0, q4_1)
    std::optional<dtype> v_type;     // V's format when it differs from K's (llama.cpp's -ctv)
    // Quest's page metadata: per (layer, page, KV head) the channel-wise min and max of the
    // page's keys as stored (key_bounds()), in bf16 rounded outwards (the min down, the max
    // up, so they still bound the keys). Off by default: it costs 2 · head_dim bf16 values per
    // page and head (1/16 of a bf16 K+V page of 16 tokens).
    bool key_bounds = false;
    // H2O's token metadata: per (layer, page, KV head, row) the position of the token the slot
    // holds (int32) and its accumulated attention score (float) — under H2O each KV head keeps
    // tokens of its own, so a slot's position is per head (token_positions(), token_scores()).
    // Off by default: 8 bytes per token, layer and head.
    bool token_scores = false;
    // KIVI: 2 or 4 bits (0: off). Pages of page_size tokens are its groups G; the newest
    // kivi_residual tokens stay in full precision. n_packed_pages packed pages follow the
    // n_pages full ones in the id space. Not with key_bounds or token_scores.
    int32_t kivi_bits = 0;
    int32_t kivi_residual = 128;
    int32_t n_packed_pages = 0;
    // One stored entry per token, read as K and as V (MLA's latent group: the values are the
    // entry's leading dims, the attention output's trailing ones are dropped): V's storage is
    // K's, so a page costs K's bytes alone and writes of V rows land on K's (callers write the
    // same row for both). Not with v_type or KIVI.
    bool keys_only = false;
    cpu::kv_page_layout layout() const { return {type, n_kv_head, page_size, head_dim, v_type, 0, keys_only}; }
    cpu::kv_page_layout packed_layout() const { return {type, n_kv_head, page_size, head_dim, std::nullopt, kivi_bits}; }
    // Bytes of one packed page (all layers); 0 without KIVI.
    size_t packed_page_bytes() const {
        return kivi_bits ? size_t(n_layer) * (packed_layout().k_page_bytes() + packed_layout().v_page_bytes()) : 0;
    }
    size_t bounds_page_bytes() const { return key_bounds ? size_t(n_kv_head * 2 * head_dim) * sizeof(uint16_t) : 0; }
    size_t token_meta_page_bytes() const { return token_scores ? size_t(n_kv_head * page_size) * (sizeof(float) + sizeof(int32_t)) : 0; }
    // Bytes of one page (K, V and their metadata, all layers).
    size_t page_bytes() const {
        return size_t(n_layer) * (layout().k_page_bytes() + (keys_only ? 0 : layout().v_page_bytes()) + bounds_page_bytes() +
                                  token_meta_page_bytes());
    }
};

// KIVI pool sizes from a KV memory budget: full-precision pages for the residuals of as many
// sequences of n_ctx tokens as fit (ceil(R / G) + 2 pages each, at most max_seqs of them) plus
// one step of step_tokens, and packed pages for the rest of the budget. Sets c.n_pages and
// c.n_packed_pages (c's geometry and KIVI fields set). Fails if not even one such sequence fits.
status kivi_size_pools(kv_config& c, int64_t budget_bytes, int32_t max_seqs, int64_t n_ctx, int64_t step_tokens);

class kv_cache {
public:
    // Fails with a clear message if the configuration is invalid or the storage cannot be had.
    static result<std::unique_ptr<kv_cache>> create(const kv_config& config);
    kv_cache(const kv_cache&) = delete;
    kv_cache& operator=(const kv_cache&) = delete;

    const kv_config& config() const { return cfg_; }
    page_pool& pool() { return pool_; }
    const page_pool& pool() const { return pool_; }
    dtype type() const { return cfg_.type; }
    const cpu::kv_page_layout& layout() const { return layout_; }
    // Bytes of K+V per token over all layers (a page's bytes over its tokens; with KIVI, a
    // packed page's: what every token past the residual costs).
    size_t bytes_per_token() const { return (cfg_.kivi_bits ? cfg_.packed_page_bytes() : cfg_.page_bytes()) / size_t(cfg_.page_size); }
    bool kivi() const { return cfg_.kivi_bits != 0; }
    // Bytes of one page (all layers) by its class, and of a sequence's table.
    size_t page_bytes_of(int32_t page) const { return pool_.is_packed(page) ? cfg_.packed_page_bytes() : cfg_.page_bytes(); }
    size_t seq_bytes(int32_t seq) const {
        size_t n = 0;
        for (int32_t p : seq_pages(seq)) n += page_bytes_of(p);
        return n;
    }
    static int32_t pages_for(int64_t n_slots, int32_t page_size) { return int32_t((n_slots + page_size - 1) / page_size); }

    // Sequences. Ids are small integers, reused after seq_remove.
    int32_t seq_add();
    void seq_remove(int32_t seq);  // frees its pages tail-first
    bool seq_exists(int32_t seq) const;
    // Ids below this may be live (those ever handed out).
    int32_t seq_id_limit() const { return int32_t(seqs_.size()); }
    // Grows the table so that logical slots [0, n_slots) exist (those not dropped). Never shrinks.
    bool seq_reserve(int32_t seq, int64_t n_slots);
    bool can_reserve(int32_t seq, int64_t n_slots) const;
    // Full pages seq_reserve(seq, n_slots) would take from the pool, and packed twins (KIVI).
    int32_t pages_to_reserve(int32_t seq, int64_t n_slots) const;
    int32_t packed_to_reserve(int32_t seq, int64_t n_slots) const;
    // KIVI: logical pages [0, kivi_packed_pages(n)) are packed once a step reaching n slots
    // is done; a query at slot L reads logical pages [0, kivi_packed_pages(L)) packed.
    int64_t kivi_packed_pages(int64_t n_slots) const {
        return cfg_.kivi_bits ? std::max<int64_t>(0, n_slots - cfg_.kivi_residual) / cfg_.page_size : 0;
    }
    // KIVI: quantizes layer `layer` of every pending twin of `seq` from its full page.
    void kivi_pack_layer(int64_t layer, int32_t seq);
    // KIVI: the twins replace their full pages in the table (all layers packed).
    void kivi_commit(int32_t seq);
    bool kivi_pending(int32_t seq) const { return !seqs_[size_t(seq)].twins.empty(); }
    // Table index i's packed twin, or -1.
    int32_t kivi_twin(int32_t seq, size_t i) const {
        const seq_state& s = seqs_[size_t(seq)];
        return i < s.twins.size() ? s.twins[i] : -1;
    }
    // KIVI: the longest prefix (in pages, at most n) of a run of cached pages that a sequence
    // may start from: the pages a query at its end reads in full precision must be full.
    int64_t kivi_usable_prefix(const int32_t* pages, int64_t n) const;
    // The logical page at table index i.
    int64_t logical_page(int32_t seq, int64_t i) const {
        const seq_state& s = seqs_[size_t(seq)];
        return i < s.n_pinned ? i : i + s.n_dropped;
    }
    // Makes the pages holding logical slots [begin, end) exclusively owned, copying shared ones.
    bool seq_prepare_write(int32_t seq, int64_t begin, int64_t end);
    // A new sequence sharing all pages of `src` (ref counts +1). n > 1 completions.
    int32_t seq_fork(int32_t src);
    // Gives back the table's pages past the first pages_for(n_slots) (tail first): an H2O
    // sequence after cutting its slots back. Not for sequences that dropped pages. Returns
    // pages freed.
    int32_t seq_truncate(int32_t seq, int64_t n_slots);
    // Speculative decoding's rollback (kv-design.md, "Rollback"): the sequence keeps logical
    // slots [0, n_slots); the table pages wholly past them go back to the pool, tail first
    // (sliding tables included; pinned pages stay). Rows past n_slots in the kept last page are
    // unread until rewritten. Not for KIVI tables with pending twins, nor H2O or Quest metadata
    // (their scores and bounds would keep the rejected tokens). Returns pages freed.
    int32_t seq_rollback(int32_t seq, int64_t n_slots);
    // Appends already-filled pages (e.g. from the prefix cache) to a sequence, taking a
    // reference on each. The sequence's table must end on a page boundary (normally empty)
    // and must not have dropped pages.
    void seq_attach(int32_t seq, const std::vector<int32_t>& pages);
    // The sequence's KV policy (dense when never set). Window and StreamingLLM sequences slide:
    // seq_trim drops the pages no later query reads, and StreamingLLM pins its sink pages.
    // Set it before the sequence holds pages.
    void seq_set_policy(int32_t seq, const kv_policy& policy);
    const kv_policy& seq_policy(int32_t seq) const { return seqs_[size_t(seq)].policy; }
    // After the first n_computed tokens (logical slots) of a sliding sequence are cached: drops
    // the pages that the queries of tokens >= n_computed never read. Returns pages dropped
    // (0 for other policies).
    int32_t seq_trim(int32_t seq, int64_t n_computed);
    // Pages a sliding sequence holds at most while it computes a chunk of n_chunk tokens
    // (0 for policies that do not bound them): its sink pages plus the W + n_chunk - 1 slots
    // the chunk's rows read, at any offset in a page. Between decode steps (n_chunk = 1):
    // ceil(S / page_size) + ceil(W / page_size) + 1 at most.
    static int32_t policy_page_bound(const kv_policy& policy, int64_t n_chunk, int32_t page_size);
    // Marks the first n pages as never dropped (StreamingLLM's sink pages).
    void seq_pin(int32_t seq, int32_t n_pages) { seqs_[size_t(seq)].n_pinned = n_pages; }
    // Gives back every unpinned page whose slots all lie below logical slot `slot` (no future
    // query reads them). Returns pages dropped.
    int32_t seq_drop_before(int32_t seq, int64_t slot);
    // The page table: the pages handed to the attention kernel, in order.
    const std::vector<int32_t>& seq_pages(int32_t seq) const { return seqs_[size_t(seq)].pages; }
    int32_t seq_n_pinned(int32_t seq) const { return seqs_[size_t(seq)].n_pinned; }
    int64_t seq_n_dropped(int32_t seq) const { return seqs_[size_t(seq)].n_dropped; }
    // Logical slots [0, seq_capacity) have been reserved (some may have been dropped since).
    int64_t seq_capacity(int32_t seq) const {
        return (int64_t(seq_pages(seq).size()) + seq_n_dropped(seq)) * cfg_.page_size;
    }
    // True if logical slot `slot` is reserved and not dropped.
    bool seq_holds(int32_t seq, int64_t slot) const;
    // Index of a held logical slot in the run of table pages (what the kernel's slots count).
    int64_t table_slot(int32_t seq, int64_t slot) const {
        const seq_state& s = seqs_[size_t(seq)];
        const int64_t lp = slot / cfg_.page_size;
        return (lp < s.n_pinned ? lp : lp - s.n_dropped) * cfg_.page_size + slot % cfg_.page_size;
    }
    // The page holding a held logical slot.
    int32_t page_of(int32_t seq, int64_t slot) const {
        return seq_pages(seq)[size_t(table_slot(seq, slot) / cfg_.page_size)];
    }

    // Storage of one layer: (n_kv_head, n_pages, block); blocks of layout().k_head_bytes() (K)
    // and v_head_bytes() (V).
    uint8_t* k_block(int64_t layer, int32_t page, int64_t head) {
        return k_layer(layer) + (size_t(head) * size_t(cfg_.n_pages) + size_t(page)) * layout_.k_head_bytes();
    }
    uint8_t* v_block(int64_t layer, int32_t page, int64_t head) {
        if (cfg_.keys_only) return k_block(layer, page, head);
        return v_layer(layer) + (size_t(head) * size_t(cfg_.n_pages) + size_t(page)) * layout_.v_head_bytes();
    }
    uint8_t* k_layer(int64_t layer) { return k_.get() + size_t(layer) * k_layer_bytes_; }
    uint8_t* v_layer(int64_t layer) { return cfg_.keys_only ? k_layer(layer) : v_.get() + size_t(layer) * v_layer_bytes_; }
    const uint8_t* k_layer(int64_t layer) const { return k_.get() + size_t(layer) * k_layer_bytes_; }
    const uint8_t* v_layer(int64_t layer) const { return cfg_.keys_only ? k_layer(layer) : v_.get() + size_t(layer) * v_layer_bytes_; }
    // The kernel's view of one layer.
    cpu::paged_kv_view view(int64_t layer) const {
        return {k_layer(layer), v_layer(layer), cfg_.n_kv_head, cfg_.page_size, cfg_.head_dim, cfg_.type, cfg_.n_pages, cfg_.v_type, 0,
                cfg_.keys_only};
    }
    // KIVI: the packed pages of one layer, (n_kv_head, n_packed_pages, block) head-major; a
    // packed page id p is page p - config().n_pages of this view.
    cpu::paged_kv_view packed_view(int64_t layer) const {
        return {kp_.get() + size_t(layer) * kp_layer_bytes_, vp_.get() + size_t(layer) * vp_layer_bytes_, cfg_.n_kv_head,
                cfg_.page_size, cfg_.head_dim, cfg_.type, cfg_.n_packed_pages, std::nullopt, cfg_.kivi_bits};
    }
    uint8_t* packed_k_block(int64_t layer, int32_t page, int64_t head) {
        return kp_.get() + size_t(layer) * kp_layer_bytes_ +
               (size_t(head) * size_t(cfg_.n_packed_pages) + size_t(page - cfg_.n_pages)) * packed_layout_.k_head_bytes();
    }
    uint8_t* packed_v_block(int64_t layer, int32_t page, int64_t head) {
        return vp_.get() + size_t(layer) * vp_layer_bytes_ +
               (size_t(head) * size_t(cfg_.n_packed_pages) + size_t(page - cfg_.n_pages)) * packed_layout_.v_head_bytes();
    }
    // Writes one token's K and V (each (n_kv_head, head_dim) float, converted to the cache's
    // format) into slot `slot` of `seq`. The slot must be reserved and its page exclusive.
    // With key bounds, the page's bounds take in the key as stored (row 0 of a page restarts
    // them: a page's rows are written in order). With token metadata, every head's slot gets
    // `position` and a score of 0.
    void write(int64_t layer, int32_t seq, int64_t slot, const float* k, const float* v, int32_t position = 0);
    // H2O's token metadata of one page and KV head: (page_size) values, null without
    // token_scores. Pages of one layer and head are page_size values apart.
    float* token_scores(int64_t layer, int32_t page, int64_t head) {
        return scores_ ? scores_.get() + meta_offset(layer, page, head) : nullptr;
    }
    const float* token_scores(int64_t layer, int32_t page, int64_t head) const {
        return scores_ ? scores_.get() + meta_offset(layer, page, head) : nullptr;
    }
    const int32_t* token_positions(int64_t layer, int32_t page, int64_t head) const {
        return positions_ ? positions_.get() + meta_offset(layer, page, head) : nullptr;
    }
    // Copies one KV head's token in (src_page, src_row) to (dst_page, dst_row) at one layer: K,
    // V and token metadata, bit for bit (H2O's per-head eviction). The destination page must be
    // exclusive. Key bounds are not updated (H2O and Quest do not combine).
    void move_row(int64_t layer, int64_t head, int32_t dst_page, int64_t dst_row, int32_t src_page, int64_t src_row);
    // Quest's bounds of one page and KV head: (2, head_dim) bf16 bits, min (rounded down) then
    // max (rounded up) over the page's written rows; null without key_bounds. Pages of one
    // layer and head are bounds_page_stride() values apart.
    const uint16_t* key_bounds(int64_t layer, int32_t page, int64_t head) const {
        return bounds_ ? bounds_.get() + bounds_offset(layer, page, head) : nullptr;
    }
    size_t bounds_page_stride() const { return size_t(2 * cfg_.head_dim); }

    // Every page free or owned; each page's ref count equals the number of tables holding it
    // plus its occurrences in `other_owners` (e.g. the prefix cache's pages).
    status check_integrity(const std::vector<int32_t>& other_owners = {}) const;

private:
    explicit kv_cache(const kv_config& config);
    struct seq_state {
        bool live = false;
        std::vector<int32_t> pages;  // page table (table slot t is in pages[t / page_size])
        int32_t n_pinned = 0;        // leading pages never dropped
        int64_t n_dropped = 0;       // logical pages dropped after the pinned ones
        kv_policy policy;
        std::vector<int32_t> twins;  // KIVI: (pages.size()) packed twin of each table page, -1 none; empty between steps
    };
    void copy_page(int32_t dst, int32_t src);
    size_t meta_offset(int64_t layer, int32_t page, int64_t head) const {
        return ((size_t(layer) * size_t(cfg_.n_kv_head) + size_t(head)) * size_t(cfg_.n_pages) + size_t(page)) * size_t(cfg_.page_size);
    }
    size_t bounds_offset(int64_t layer, int32_t page, int64_t head) const {
        return ((size_t(layer) * size_t(cfg_.n_kv_head) + size_t(head)) * size_t(cfg_.n_pages) + size_t(page)) * bounds_page_stride();
    }

    kv_config cfg_;
    page_pool pool_;
    cpu::kv_page_layout layout_;
    size_t k_layer_bytes_ = 0, v_layer_bytes_ = 0;  // n_pages pages
    huge_buffer k_, v_;  // (n_layer, n_kv_head, n_pages, block) head-major, zeroed
    cpu::kv_page_layout packed_layout_;
    size_t kp_layer_bytes_ = 0, vp_layer_bytes_ = 0;  // n_packed_pages packed pages
    huge_buffer kp_, vp_;  // KIVI: (n_layer, n_kv_head, n_packed_pages, block) head-major
    std::unique_ptr<uint16_t[]> bounds_;  // (n_layer, n_kv_head, n_pages, 2, head_dim) bf16, or null
    std::unique_ptr<float[]> scores_;      // (n_layer, n_kv_head, n_pages, page_size), or null
    std::unique_ptr<int32_t[]> positions_; // (n_layer, n_kv_head, n_pages, page_size), or null
    std::vector<seq_state> seqs_;
};

}  // namespace kvs
