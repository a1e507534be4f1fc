#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/attention_isa.h"
#include "kernels/cpu/kv_quant.h"
#include "kernels/cpu/ops.h"

namespace kvs::cpu {

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

dtype dtype_of(detail::kv_fmt f) {
    switch (f) {
        case detail::kv_fmt::f16: return dtype::f16;
        case detail::kv_fmt::bf16: return dtype::bf16;
        case detail::kv_fmt::q8_0: return dtype::q8_0;
        case detail::kv_fmt::q4_0: return dtype::q4_0;
        case detail::kv_fmt::q4_1: return dtype::q4_1;
        default: return dtype::f32;
    }
}

// Decodes token `r` of one KV head's K and V blocks (kv_page_layout; V follows for_v()) into
// float rows.
void load_row(const kv_page_layout& l, bool is_v, const uint8_t* block, int64_t r, float* row) {
    const int64_t hd = l.head_dim;
    if (l.is_kivi()) return is_v ? kivi_dequantize_v_row(l, block, r, row) : kivi_dequantize_k_row(l, block, r, row);
    if (l.is_quantized()) return kv_dequantize_row(l, block, r, row);
    if (l.type == dtype::f32) {
        std::memcpy(row, block + size_t(r * hd) * sizeof(float), size_t(hd) * sizeof(float));
        return;
    }
    const auto* p16 = reinterpret_cast<const uint16_t*>(block);
    const int64_t step = is_v ? 2 : 1;
    p16 += is_v ? (r / 2) * hd * 2 + (r & 1) : r * l.k_row_elems();
    if (l.type == dtype::bf16) {
        for (int64_t d = 0; d < hd; ++d) row[d] = bf16_to_f32(p16[step * d]);
    } else {
        for (int64_t d = 0; d < hd; ++d) row[d] = f16_to_f32(p16[step * d]);
    }
}

// Portable tile kernel (scalar and AVX2 paths, every format): one query vector at a time,
// online softmax over the keys one by one (FlashAttention's running max m, denominator l,
// accumulator acc), in float32 from the stored values.
void attend_portable(const detail::attn_work& w) {
    const int64_t hd = w.hd;
    const int32_t kivi = w.fmt == detail::kv_fmt::kivi ? w.kivi_bits : 0;
    const kv_page_layout lay{dtype_of(w.fmt), 0, w.page_size, hd, std::nullopt, kivi};
    const kv_page_layout lay_v{dtype_of(w.v_fmt), 0, w.page_size, hd, std::nullopt, kivi};
    static thread_local std::vector<float> buf;
    buf.resize(size_t(3 * hd));
    float* acc = buf.data();  // (hd)
    float* krow = acc + hd;   // (hd)
    float* vrow = krow + hd;  // (hd)
    for (int64_t r = 0; r < w.n_rows; ++r) {
        const int64_t t_end = std::min<int64_t>(w.t1, w.kv_len[r]);
        const int64_t t_begin = w.kv_begin ? std::max<int64_t>(w.t0, w.kv_begin[r]) : w.t0;
        for (int64_t g = 0; g < w.n_group; ++g) {
            const float* q = w.q + r * w.q_row_stride + g * hd;
            float m = neg_inf, l = 0.0f;
            std::fill(acc, acc + hd, 0.0f);
            for (int64_t t = t_begin; t < t_end; ++t) {
                const size_t page = size_t(w.pages[t / w.page_size]);
                load_row(lay, false, w.k + page * w.k_page_bytes + w.k_head_off, t % w.page_size, krow);
                if (w.v_is_k) std::copy_n(krow, hd, vrow);
                else load_row(lay_v, true, w.v + page * w.v_page_bytes + w.v_head_off, t % w.page_size, vrow);
                float s = 0.0f;
                for (int64_t d = 0; d < hd; ++d) s += q[d] * krow[d];
                s *= w.scale;
                if (s > m) {
                    const float corr = std::exp(m - s);  // 0 when m was -inf
                    for (int64_t d = 0; d < hd; ++d) acc[d] *= corr;
                    l *= corr;
                    m = s;
                }
                const float p = std::exp(s - m);
                l += p;
                for (int64_t d = 0; d < hd; ++d) acc[d] += p * vrow[d];
            }
            float* out = w.o + r * w.o_row_stride + g * hd;
            if (l == 0.0f) {
                std::fill(out, out + hd, 0.0f);
                w.lse[r * w.lse_row_stride + g] = neg_inf;
                continue;
            }
            const float inv = 1.0f / l;
            for (int64_t d = 0; d < hd; ++d) out[d] = acc[d] * inv;
            w.lse[r * w.lse_row_stride + g] = m + std::log(l);
        }
    }
}

detail::kv_fmt fmt_of(dtype t) {
    switch (t) {
        case dtype::f16: return detail::kv_fmt::f16;
        case dtype::bf16: return detail::kv_fmt::bf16;
        case dtype::q8_0: return detail::kv_fmt::q8_0;
        case dtype::q4_0: return detail::kv_fmt::q4_0;
        case dtype::q4_1: return detail::kv_fmt::q4_1;
        default: return detail::kv_fmt::f32;
    }
}

detail::attn_fn active_attention_kernel(detail::kv_fmt fmt) {
    if (isa_active() == isa::avx512) {
        if (detail::attn_fn f = detail::attention_kernel_avx512(fmt)) return f;
    }
    return attend_portable;
}

struct row_block {
    int64_t row0, n_rows, min_begin, max_len;  // rows [row0, row0 + n_rows) see slots within [min_begin, max_len)
};

}  // namespace

// Plan: query rows are grouped into blocks of consecutive rows of one sequence, so that a
// block's query vectors (rows × the heads of a GQA group, at most attn_max_qv) share every
// K/V element loaded; tasks are (block, KV head, head chunk). When that gives too few tasks
// for the pool and the KV is long (decode at long context), the KV range is also split and
// the partial (O, LSE) states merged exactly (attention_merge), so all threads stream KV.
void attention_paged(const attention_batch& b, const paged_kv_view& kv, float* o, float* lse, thread_pool& pool) {
    if (b.n_q <= 0) return;
    const int64_t hd = kv.head_dim, ps = kv.page_size;
    const int64_t n_group = b.n_head / kv.n_kv_head;
    const int64_t hc = std::min(n_group, detail::attn_max_qv);  // heads per task
    const int64_t n_hchunks = (n_group + hc - 1) / hc;
    const int64_t rows_per_block = std::max<int64_t>(1, detail::attn_max_qv / hc);

    // Plan and partial states live in the calling thread's scratch; the tasks (on other
    // threads) reach them through plain pointers, never by naming the thread_locals.
    static thread_local std::vector<row_block> block_buf;
    std::vector<row_block>& blocks = block_buf;
    blocks.clear();
    int64_t max_len = 0, min_begin = std::numeric_limits<int64_t>::max();
    for (int64_t r = 0; r < b.n_q; ++r) {
        const int64_t len = b.q_kv_len[r];
        // (Rounded down to an even row of its page: 16-bit V rows are stored in token pairs and
        // a tile starts on a pair; the extra slot is masked.)
        int64_t begin = b.q_kv_begin ? std::min<int64_t>(b.q_kv_begin[r], len) : 0;
        begin -= (begin % ps) & 1;
        max_len = std::max(max_len, len);
        min_begin = std::min(min_begin, begin);
        if (blocks.empty() || b.q_seq[r] != b.q_seq[blocks.back().row0] || blocks.back().n_rows == rows_per_block) {
            blocks.push_back({r, 1, begin, len});
        } else {
            blocks.back().n_rows++;
            blocks.back().min_begin = std::min(blocks.back().min_begin, begin);
            blocks.back().max_len = std::max(blocks.back().max_len, len);
        }
    }
    const int64_t n_base = int64_t(blocks.size()) * kv.n_kv_head * n_hchunks;
    const int64_t want_tasks = 4 * int64_t(pool.n_threads());
    // The KV range is split over [split_base, max_len): the slots some row sees (a window's
    // rows skip the slots before it), cut at page boundaries.
    int64_t n_split = 1;
    constexpr int64_t min_split_keys = 256;
    const int64_t split_base = min_begin / ps * ps, span = max_len - split_base;
    if (n_base < want_tasks && span >= 2 * min_split_keys)
        n_split = std::min((want_tasks + n_base - 1) / n_base, span / min_split_keys);
    int64_t split_len = (span + n_split - 1) / n_split;
    split_len = std::max<int64_t>(1, (split_len + ps - 1) / ps * ps);
    n_split = std::max<int64_t>(1, (span + split_len - 1) / split_len);

    // Splits after the first write partial states here: (n_split - 1, n_q, n_head, hd), lse
    // (n_split - 1, n_q, n_head).
    static thread_local std::vector<float> part_o_buf, part_lse_buf;
    std::vector<float>& part_o = part_o_buf;
    std::vector<float>& part_lse = part_lse_buf;
    const size_t o_elems = size_t(b.n_q * b.n_head * hd), lse_elems = size_t(b.n_q * b.n_head);
    if (n_split > 1) {
        if (part_o.size() < size_t(n_split - 1) * o_elems) part_o.resize(size_t(n_split - 1) * o_elems);
        if (part_lse.size() < size_t(n_split - 1) * lse_elems) part_lse.resize(size_t(n_split - 1) * lse_elems);
    }

    const kv_page_layout lay = kv.layout(), lay_v = lay.for_v();
    const detail::kv_fmt fmt = lay.is_kivi() ? detail::kv_fmt::kivi : fmt_of(kv.type);
    const detail::kv_fmt v_fmt = lay.is_kivi() ? detail::kv_fmt::kivi : fmt_of(lay.v());
    const detail::attn_fn kernel = active_attention_kernel(fmt);
    const int64_t per_block = kv.n_kv_head * n_hchunks * n_split;
    const row_block* block_list = blocks.data();
    float* part_o_data = part_o.data();
    float* part_lse_data = part_lse.data();
    pool.run(int64_t(blocks.size()) * per_block, [&](int64_t task, int) {
        const row_block& blk = block_list[size_t(task / per_block)];
        int64_t rest = task % per_block;
        const int64_t split = rest % n_split;
        rest /= n_split;
        const int64_t hchunk = rest % n_hchunks, kvh = rest / n_hchunks;
        const int64_t g0 = hchunk * hc, h0 = kvh * n_group + g0;
        detail::attn_work w{};
        w.q = b.q + (blk.row0 * b.n_head + h0) * hd;
        w.q_row_stride = b.n_head * hd;
        w.n_rows = blk.n_rows;
        w.n_group = std::min(hc, n_group - g0);
        w.hd = hd;
        w.kv_len = b.q_kv_len + blk.row0;
        w.kv_begin = b.q_kv_begin ? b.q_kv_begin + blk.row0 : nullptr;
        w.fmt = fmt;
        w.v_fmt = v_fmt;
        w.k = static_cast<const uint8_t*>(kv.k);
        w.v = static_cast<const uint8_t*>(kv.v);
        const int32_t entry = b.q_seq[blk.row0];
        w.pages = b.page_ids + b.page_indptr[b.seq_head_entry ? b.seq_head_entry[entry * kv.n_kv_head + kvh] : entry];
        w.page_size = ps;
        w.k_row_elems = lay.k_row_elems();
        w.kivi_bits = lay.kivi_bits;
        if (lay.is_kivi()) {
            w.q_group = lay.kivi_v_group();
            w.q_groups = lay.kivi_v_groups();
            w.q_row_bytes = w.v_q_row_bytes = lay.kivi_row_bytes();
            w.q_scale_off = w.v_q_scale_off = lay.kivi_param_offset();
        } else if (lay.is_quantized() || lay_v.is_quantized()) {
            w.q_group = lay.q_group();
            w.q_groups = lay.q_groups();
        }
        if (lay.is_quantized()) {
            w.q_row_bytes = lay.q_row_bytes();
            w.q_scale_off = lay.q_scale_offset();
            w.q_min_off = lay.q_min_offset();
        }
        if (lay_v.is_quantized()) {
            w.v_q_row_bytes = lay_v.q_row_bytes();
            w.v_q_scale_off = lay_v.q_scale_offset();
            w.v_q_min_off = lay_v.q_min_offset();
        }
        w.k_page_bytes = kv.k_page_stride();
        w.v_page_bytes = kv.v_page_stride();
        w.k_head_off = size_t(kvh) * kv.k_head_stride();
        w.v_head_off = size_t(kvh) * kv.v_head_stride();
        w.v_is_k = lay.v_is_k;
        if (w.v_is_k) w.v = w.k, w.v_page_bytes = w.k_page_bytes, w.v_head_off = w.k_head_off;
        w.t0 = std::max(blk.min_begin, split_base + split * split_len);
        w.t1 = std::min(blk.max_len, split_base + (split + 1) * split_len);
        w.scale = b.scale;
        float* o_base = split == 0 ? o : part_o_data + size_t(split - 1) * o_elems;
        float* lse_base = split == 0 ? lse : part_lse_data + size_t(split - 1) * lse_elems;
        w.o = o_base + (blk.row0 * b.n_head + h0) * hd;
        w.o_row_stride = b.n_head * hd;
        w.lse = lse_base + blk.row0 * b.n_head + h0;
        w.lse_row_stride = b.n_head;
        kernel(w);
    });
    for (int64_t sp = 1; sp < n_split; ++sp)
        attention_merge(o, lse, part_o.data() + size_t(sp - 1) * o_elems, part_lse.data() + size_t(sp - 1) * lse_elems,
                        b.n_q * b.n_head, hd);
}

void attention_merge(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int64_t n, int64_t head_dim) {
    for (int64_t i = 0; i < n; ++i) {
        const float la = lse_a[i], lb = lse_b[i];
        if (lb == neg_inf) continue;
        if (la == neg_inf) {
            std::copy(o_b + i * head_dim, o_b + (i + 1) * head_dim, o_a + i * head_dim);
            lse_a[i] = lb;
            continue;
        }
        const float mx = std::max(la, lb);
        const float wa = std::exp(la - mx), wb = std::exp(lb - mx);
        const float inv = 1.0f / (wa + wb);
        for (int64_t d = 0; d < head_dim; ++d)
            o_a[i * head_dim + d] = (o_a[i * head_dim + d] * wa + o_b[i * head_dim + d] * wb) * inv;
        lse_a[i] = mx + std::log(wa + wb);
    }
}

namespace ref {

void attention_paged(const attention_batch& b, const paged_kv_view& kv, float* o, float* lse) {
    const int64_t hd = kv.head_dim, ps = kv.page_size;
    const int64_t n_group = b.n_head / kv.n_kv_head;
    const kv_page_layout lay = kv.layout();
    for (int64_t row = 0; row < b.n_q; ++row) {
        const int64_t n_kv = b.q_kv_len[row];
        const int64_t begin = b.q_kv_begin ? std::min<int64_t>(b.q_kv_begin[row], n_kv) : 0;
        for (int64_t h = 0; h < b.n_head; ++h) {
            const int64_t kvh = h / n_group;
            const int32_t entry = b.seq_head_entry ? b.seq_head_entry[b.q_seq[row] * kv.n_kv_head + kvh] : b.q_seq[row];
            const int32_t* pages = b.page_ids + b.page_indptr[entry];
            const float* q = b.q + (row * b.n_head + h) * hd;
            std::vector<double> sc(static_cast<size_t>(n_kv), 0.0);
            double mx = -std::numeric_limits<double>::infinity();
            for (int64_t t = begin; t < n_kv; ++t) {
                const uint8_t* kp = kv.k_block(pages[t / ps], kvh);
                double acc = 0;
                for (int64_t d = 0; d < hd; ++d) acc += double(q[d]) * double(kv_load_k(lay, kp, t % ps, d));
                sc[size_t(t)] = acc * double(b.scale);
                mx = std::max(mx, sc[size_t(t)]);
            }
            double sum = 0;
            for (int64_t t = begin; t < n_kv; ++t) sum += (sc[size_t(t)] = std::exp(sc[size_t(t)] - mx));
            float* out = o + (row * b.n_head + h) * hd;
            const bool any = begin < n_kv;
            for (int64_t d = 0; d < hd; ++d) {
                double acc = 0;
                for (int64_t t = begin; t < n_kv; ++t) {
                    const uint8_t* vp = kv.v_block(pages[t / ps], kvh);
                    acc += sc[size_t(t)] * double(kv_load_v(lay, vp, t % ps, d));
                }
                out[d] = any ? float(acc / sum) : 0.0f;
            }
            lse[row * b.n_head + h] = any ? float(mx + std::log(sum)) : neg_inf;
        }
    }
}

}  // namespace ref

// ---- KV page layout ---------------------------------------------------------------------------

namespace {

float half_value(dtype t, uint16_t h) { return t == dtype::bf16 ? bf16_to_f32(h) : f16_to_f32(h); }

// One token's K row (head_dim floats) into row `row` of a K block in l's format.
void store_k(const kv_page_layout& l, uint8_t* kh, int64_t row, const float* ks) {
    const int64_t hd = l.head_dim;
    if (l.is_quantized()) return kv_quantize_row(l, ks, kh, row);
    if (l.type == dtype::f32) {
        std::memcpy(kh + size_t(row * hd) * sizeof(float), ks, size_t(hd) * sizeof(float));
        return;
    }
    uint16_t (*cvt)(float) = l.type == dtype::bf16 ? f32_to_bf16 : f32_to_f16;
    auto* k16 = reinterpret_cast<uint16_t*>(kh) + row * l.k_row_elems();
    for (int64_t d = 0; d < hd; ++d) k16[d] = cvt(ks[d]);
    for (int64_t d = hd; d < l.k_row_elems(); ++d) k16[d] = 0;
}

// One token's V row into row `row` of a V block; lv is V's layout (kv_page_layout::for_v).
void store_v(const kv_page_layout& lv, uint8_t* vh, int64_t row, const float* vs) {
    const int64_t hd = lv.head_dim;
    if (lv.is_quantized()) return kv_quantize_row(lv, vs, vh, row);
    if (lv.type == dtype::f32) {
        std::memcpy(vh + size_t(row * hd) * sizeof(float), vs, size_t(hd) * sizeof(float));
        return;
    }
    uint16_t (*cvt)(float) = lv.type == dtype::bf16 ? f32_to_bf16 : f32_to_f16;
    auto* v16 = reinterpret_cast<uint16_t*>(vh) + (row / 2) * hd * 2 + (row & 1);
    for (int64_t d = 0; d < hd; ++d) v16[2 * d] = cvt(vs[d]);
}

void copy_k(const kv_page_layout& l, void* k_dst, int64_t dst_row, const void* k_src, int64_t src_row) {
    const int64_t hd = l.head_dim;
    if (l.is_quantized())
        return kv_copy_quant_row(l, static_cast<uint8_t*>(k_dst), dst_row, static_cast<const uint8_t*>(k_src), src_row);
    if (l.type == dtype::f32) {
        std::memmove(static_cast<float*>(k_dst) + dst_row * hd, static_cast<const float*>(k_src) + src_row * hd, size_t(hd) * sizeof(float));
        return;
    }
    const int64_t kr = l.k_row_elems();
    std::memmove(static_cast<uint16_t*>(k_dst) + dst_row * kr, static_cast<const uint16_t*>(k_src) + src_row * kr,
                 size_t(kr) * sizeof(uint16_t));
}

void copy_v(const kv_page_layout& lv, void* v_dst, int64_t dst_row, const void* v_src, int64_t src_row) {
    const int64_t hd = lv.head_dim;
    if (lv.is_quantized())
        return kv_copy_quant_row(lv, static_cast<uint8_t*>(v_dst), dst_row, static_cast<const uint8_t*>(v_src), src_row);
    if (lv.type == dtype::f32) {
        std::memmove(static_cast<float*>(v_dst) + dst_row * hd, static_cast<const float*>(v_src) + src_row * hd, size_t(hd) * sizeof(float));
        return;
    }
    // Tokens 2i and 2i+1 interleaved per dimension.
    auto* vd = static_cast<uint16_t*>(v_dst) + (dst_row / 2) * hd * 2 + (dst_row & 1);
    const auto* vs = static_cast<const uint16_t*>(v_src) + (src_row / 2) * hd * 2 + (src_row & 1);
    for (int64_t d = 0; d < hd; ++d) vd[2 * d] = vs[2 * d];
}

}  // namespace

void kv_store_row(const kv_page_layout& l, void* k0, void* v0, size_t k_head_stride, size_t v_head_stride, int64_t row,
                  const float* k, const float* v) {
    const kv_page_layout lv = l.for_v();
    auto* kb = static_cast<uint8_t*>(k0);
    auto* vb = static_cast<uint8_t*>(v0);
    for (int64_t h = 0; h < l.n_kv_head; ++h) {
        store_k(l, kb + size_t(h) * k_head_stride, row, k + h * l.head_dim);
        if (!l.v_is_k) store_v(lv, vb + size_t(h) * v_head_stride, row, v + h * l.head_dim);
    }
}

void kv_copy_row(const kv_page_layout& l, void* k_dst, void* v_dst, int64_t dst_row, const void* k_src, const void* v_src,
                 int64_t src_row) {
    copy_k(l, k_dst, dst_row, k_src, src_row);
    if (!l.v_is_k) copy_v(l.for_v(), v_dst, dst_row, v_src, src_row);
}

float kv_load_k(const kv_page_layout& l, const void* k_block, int64_t row, int64_t d) {
    const auto* kh = static_cast<const uint8_t*>(k_block);
    if (l.is_kivi()) return kivi_dequantize_k(l, kh, row, d);
    if (l.is_quantized()) return kv_dequantize(l, kh, row, d);
    if (l.type == dtype::f32) return reinterpret_cast<const float*>(kh)[row * l.head_dim + d];
    return half_value(l.type, reinterpret_cast<const uint16_t*>(kh)[row * l.k_row_elems() + d]);
}

void kv_load_k_row(const kv_page_layout& l, const void* k_block, int64_t row, float* out) {
    load_row(l, false, static_cast<const uint8_t*>(k_block), row, out);
}

float kv_load_v(const kv_page_layout& layout, const void* v_block, int64_t row, int64_t d) {
    if (layout.v_is_k) return kv_load_k(layout, v_block, row, d);
    const kv_page_layout l = layout.for_v();
    const auto* vh = static_cast<const uint8_t*>(v_block);
    if (l.is_kivi()) return kivi_dequantize_v(l, vh, row, d);
    if (l.is_quantized()) return kv_dequantize(l, vh, row, d);
    if (l.type == dtype::f32) return reinterpret_cast<const float*>(vh)[row * l.head_dim + d];
    return half_value(l.type, reinterpret_cast<const uint16_t*>(vh)[(row / 2) * l.head_dim * 2 + d * 2 + (row & 1)]);
}

}  // namespace kvs::cpu
