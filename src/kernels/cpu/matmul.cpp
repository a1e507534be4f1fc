// matmul front end: prepares activations, cuts y = x · wᵀ into tiles and hands them to the
// thread pool; the per-ISA tile kernels (matmul_{scalar,avx2,avx512}.cpp) do the math.
//
// Work split. Tasks are rectangles of (weight rows) × (x rows):
//   - decode (m = 1): a GEMV, bound by reading the weights once; tasks are chunks of
//     output rows, several per thread so that the atomic hand-out balances uneven cores.
//   - prefill (m > 1): x rows are grouped in blocks of up to 64, and the tile kernels walk
//     each weight row chunk once per block, reusing every loaded weight block for 4 x rows
//     (see the micro-kernels), so weight traffic drops by the block height.
//
// Quantized weights (q8_0, q4_0, q4_1) are multiplied with x quantized on the fly to 8-bit
// blocks of 32 (one f32 scale per block), so each block's dot is an integer dot product.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"

namespace kvs::cpu {

namespace {

detail::gemm_fn gemm_for(const detail::kernel_table& k, dtype t) {
    switch (t) {
        case dtype::f32: return k.gemm_f32;
        case dtype::f16: return k.gemm_f16;
        case dtype::bf16: return k.gemm_bf16;
        case dtype::q8_0: return k.gemm_q8_0;
        case dtype::q4_0: return k.gemm_q4_0;
        case dtype::q4_1: return k.gemm_q4_1;
        default: return nullptr;
    }
}

bool is_quantized(dtype t) { return t == dtype::q8_0 || t == dtype::q4_0 || t == dtype::q4_1; }

// Scratch for quantized activations, grown on first use and then reused (no allocation on
// the decode path after warm-up). Only the thread calling matmul touches it.
struct q8_scratch {
    std::vector<int8_t> qs;   // (m, n_in)
    std::vector<float> d;     // (m, n_in / 32)
    std::vector<int32_t> s;   // (m, n_in / 32)
    void reserve(int64_t m, int64_t n_in) {
        size_t n = size_t(m * n_in);
        if (qs.size() < n) qs.resize(n);
        if (d.size() < n / 32) d.resize(n / 32);
        if (s.size() < n / 32) s.resize(n / 32);
    }
};

q8_scratch& scratch() {
    static thread_local q8_scratch s;
    return s;
}

constexpr int64_t max_m_block = 64;  // x rows per task (their q8 copy stays in L2)

}  // namespace

bool matmul_supported(dtype t) { return gemm_for(*detail::kernels_scalar(), t) != nullptr; }

void matmul(const weight_view& w, const float* x, int64_t m, float* y, thread_pool& pool) {
    if (m <= 0 || w.n_out <= 0) return;
    const detail::kernel_table& k = detail::active_kernels();
    detail::gemm_fn fn = gemm_for(k, w.type);
    if (!fn) fn = gemm_for(*detail::kernels_scalar(), w.type);
    const dtype_traits& tr = dtype_info(w.type);
    if (!fn || w.n_in % tr.block_size != 0) {
        // Unsupported: callers validate weights at load time (matmul_supported); make a slip
        // loud rather than silently wrong.
        std::fill(y, y + m * w.n_out, std::numeric_limits<float>::quiet_NaN());
        return;
    }
    const int64_t n_in = w.n_in;
    const size_t row_bytes = dtype_row_bytes(w.type, n_in);
    const int n_threads = pool.n_threads();

    // Quantize x once for all tasks.
    detail::q8_rows q8{};
    if (is_quantized(w.type)) {
        q8_scratch& sc = scratch();
        sc.reserve(m, n_in);
        const int64_t nb = n_in / 32;
        auto quantize_row = [&](int64_t i) {
            k.quantize_q8_row(x + i * n_in, n_in, sc.qs.data() + i * n_in, sc.d.data() + i * nb,
                              sc.s.data() + i * nb);
        };
        if (m >= 4 && n_threads > 1) {
            pool.run(m, [&](int64_t i, int) { quantize_row(i); });
        } else {
            for (int64_t i = 0; i < m; ++i) quantize_row(i);
        }
        q8 = {sc.qs.data(), sc.d.data(), sc.s.data(), n_in};
    }

    // Task geometry.
    const int64_t n_m_blocks = (m + max_m_block - 1) / max_m_block;
    const int64_t m_block = (m + n_m_blocks - 1) / n_m_blocks;  // balanced block height
    // Aim for ~8 tasks per thread in total, weight-row chunks a multiple of 16 rows.
    int64_t target_chunks = std::max<int64_t>(1, int64_t(n_threads) * 8 / n_m_blocks);
    int64_t chunk = (w.n_out + target_chunks - 1) / target_chunks;
    chunk = std::max<int64_t>(16, (chunk + 15) / 16 * 16);
    const int64_t n_chunks = (w.n_out + chunk - 1) / chunk;

    const auto* wbytes = static_cast<const uint8_t*>(w.data);
    const bool quantized = is_quantized(w.type);
    auto tile = [&](int64_t task, int) {
        const int64_t c = task % n_chunks, mb = task / n_chunks;
        const int64_t o0 = c * chunk, o1 = std::min(w.n_out, o0 + chunk);
        const int64_t i0 = mb * m_block, i1 = std::min(m, i0 + m_block);
        detail::q8_rows q8_block{};
        detail::gemm_tile t{};
        t.w = wbytes + size_t(o0) * row_bytes;
        t.w_row_bytes = row_bytes;
        t.n_o = o1 - o0;
        t.n_in = n_in;
        if (quantized) {
            const int64_t nb = n_in / 32;
            q8_block = {q8.qs + i0 * n_in, q8.d + i0 * nb, q8.s + i0 * nb, n_in};
            t.x = &q8_block;
        } else {
            t.x = x + i0 * n_in;
        }
        t.x_stride = n_in;
        t.m = i1 - i0;
        t.y = y + i0 * w.n_out + o0;
        t.ldy = w.n_out;
        fn(t);
    };
    pool.run(n_chunks * n_m_blocks, tile);
}

}  // namespace kvs::cpu
