// matmul front end: prepares activations, cuts y = x · wᵀ into tiles and hands them to the
// thread pool; the per-ISA tile kernels (matmul_{scalar,avx2,avx512}.cpp) do the math.
//
// Work split. Tasks are rectangles of (weight rows) × (x rows):
//   - decode (m = 1): a GEMV, bound by reading the weights once; tasks are chunks of
//     output rows, several per thread so that the atomic hand-out balances uneven cores.
//   - prefill (m > 1): x rows are grouped in blocks of up to 64, and the tile kernels walk
//     each weight row chunk (sized to stay in L2) once per block, reusing every decoded
//     weight block for several x rows (4 in the row-major micro-kernels, 8 in the
//     interleaved16 ones), so weight traffic drops by the block height.
//
// Weights repacked to interleaved16 (interleave.h) go to the interleaved kernels; f16/bf16
// weights against m >= 2 rows use bf16 dot products where the CPU has AVX512-BF16 (x rounded
// to bf16 once per call; matmul_bf16dot_avx512.cpp states the precision contract).
//
// The numbers above (64 rows, ~8 tasks per thread, 512 KiB, bf16 dot products) are the defaults
// of matmul_tuning (ops.h); a call reads them from the tuning of its first weight's dtype and
// its m class, so that autotune.h can pick others for the running CPU.
//
// Quantized weights (q8_0, q4_0, q4_1) are multiplied with x quantized on the fly to 8-bit
// blocks of 32 (one f32 scale per block), so each block's dot is an integer dot product.
// K-quant weights (q4_K, q5_K, q6_K) use x quantized per super-block of 256 (q8k_rows), so
// a whole super-block's scaled sub-block dots are summed in integers.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <forward_list>
#include <limits>
#include <mutex>
#include <vector>

#include "kernels/cpu/interleave.h"
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
        case dtype::q4_k: return k.gemm_q4_k;
        case dtype::q5_k: return k.gemm_q5_k;
        case dtype::q6_k: return k.gemm_q6_k;
        default: return nullptr;
    }
}

bool is_half(dtype t) { return t == dtype::f16 || t == dtype::bf16; }

// The kernel for w on the active ISA (falling back to the portable one), or null. `bk` is the
// bf16 dot-product table when it may be used (m >= 2 and the CPU has it); *bf16_x tells
// whether the chosen kernel reads activations rounded to bf16 instead of float.
detail::gemm_fn kernel_for(const detail::kernel_table& k, const detail::bf16dot_kernel_table* bk,
                           const weight_view& w, bool* bf16_x) {
    *bf16_x = false;
    if (w.layout == weight_layout::interleaved16) {
        if (w.n_out % interleave_rows != 0) return nullptr;
        const detail::interleaved_kernel_table& ik = detail::active_interleaved_kernels();
        switch (w.type) {
            case dtype::q4_0: return ik.gemm_q4_0;
            case dtype::q8_0: return ik.gemm_q8_0;
            case dtype::q4_k: return ik.gemm_q4_k ? ik.gemm_q4_k : detail::interleaved_kernels_scalar()->gemm_q4_k;
            case dtype::q5_k: return ik.gemm_q5_k ? ik.gemm_q5_k : detail::interleaved_kernels_scalar()->gemm_q5_k;
            case dtype::q6_k: return ik.gemm_q6_k ? ik.gemm_q6_k : detail::interleaved_kernels_scalar()->gemm_q6_k;
            case dtype::f16:
            case dtype::bf16: {
                detail::gemm_fn dot = w.type == dtype::f16 ? ik.gemm_f16_bf16dot : ik.gemm_bf16_bf16dot;
                if (bk && dot) {
                    *bf16_x = true;
                    return dot;
                }
                return w.type == dtype::f16 ? ik.gemm_f16 : ik.gemm_bf16;
            }
            default: return nullptr;
        }
    }
    if (bk && is_half(w.type)) {
        *bf16_x = true;
        return w.type == dtype::f16 ? bk->gemm_f16 : bk->gemm_bf16;
    }
    detail::gemm_fn fn = gemm_for(k, w.type);
    return fn ? fn : gemm_for(*detail::kernels_scalar(), w.type);
}

bool is_quantized(dtype t) { return t == dtype::q8_0 || t == dtype::q4_0 || t == dtype::q4_1; }
bool is_kquant(dtype t) { return t == dtype::q4_k || t == dtype::q5_k || t == dtype::q6_k; }

// Scratch for quantized activations, grown on first use and then reused (no allocation on
// the decode path after warm-up). Only the thread calling matmul touches it.
struct q8_scratch {
    std::vector<int8_t> qs;   // (m, n_in)
    std::vector<float> d;     // (m, n_in / 32)
    std::vector<int32_t> s;   // (m, n_in / 32)
    std::vector<int8_t> k_qs;      // (m, n_in)        q8k_rows planes, for k-quant weights
    std::vector<float> k_d;        // (m, n_in / 256)
    std::vector<int16_t> k_bsums;  // (m, n_in / 16)
    void reserve(int64_t m, int64_t n_in) {
        size_t n = size_t(m * n_in);
        if (qs.size() < n) qs.resize(n);
        if (d.size() < n / 32) d.resize(n / 32);
        if (s.size() < n / 32) s.resize(n / 32);
    }
    void reserve_k(int64_t m, int64_t n_in) {
        size_t n = size_t(m * n_in);
        if (k_qs.size() < n) k_qs.resize(n);
        if (k_d.size() < n / 256) k_d.resize(n / 256);
        if (k_bsums.size() < n / 16) k_bsums.resize(n / 16);
    }
};

q8_scratch& scratch() {
    static thread_local q8_scratch s;
    return s;
}

// matmul_swiglu without y_up: each worker's up-projection tile (m_block × chunk floats), in
// one buffer per calling thread (slot per worker), grown when a larger shape first runs.
std::vector<float>& up_tile_scratch() {
    static thread_local std::vector<float> s;
    return s;
}

// Activations rounded to bf16 for the bf16 dot-product kernels, likewise reused.
std::vector<uint16_t>& bf16_scratch() {
    static thread_local std::vector<uint16_t> s;
    return s;
}

// The active tuning table. Tables are immutable once published and never freed (a few KB
// each, set once per model load), so a matmul may keep reading the one it started with.
const matmul_tuning_table& default_tuning() {
    static const matmul_tuning_table t;
    return t;
}

std::atomic<const matmul_tuning_table*>& active_tuning() {
    static std::atomic<const matmul_tuning_table*> p{&default_tuning()};
    return p;
}

}  // namespace

matmul_tuning_table::matmul_tuning_table() {
    for (auto& row : entry)
        for (matmul_tuning& e : row) e = matmul_tuning{};
    for (bool& r : repack) r = true;
}

const char* matmul_m_class_name(matmul_m_class c) {
    switch (c) {
        case matmul_m_class::gemv: return "gemv";
        case matmul_m_class::small: return "small";
        case matmul_m_class::large: return "large";
    }
    return "?";
}

const matmul_tuning_table& matmul_tuning_active() { return *active_tuning().load(std::memory_order_acquire); }

void matmul_tuning_set(const matmul_tuning_table& t) {
    static std::mutex mu;
    static std::forward_list<matmul_tuning_table> published;
    std::lock_guard<std::mutex> lock(mu);
    published.push_front(t);
    active_tuning().store(&published.front(), std::memory_order_release);
}

void matmul_tuning_reset() { active_tuning().store(&default_tuning(), std::memory_order_release); }

const char* tune_level_name(tune_level l) {
    switch (l) {
        case tune_level::off: return "off";
        case tune_level::fast: return "fast";
        case tune_level::full: return "full";
    }
    return "?";
}

bool tune_level_from_name(const std::string& s, tune_level* out) {
    for (tune_level l : {tune_level::off, tune_level::fast, tune_level::full})
        if (s == tune_level_name(l)) {
            *out = l;
            return true;
        }
    return false;
}

bool matmul_supported(dtype t) { return gemm_for(*detail::kernels_scalar(), t) != nullptr; }

namespace {

// The common body of matmul, matmul_multi and matmul_swiglu: y[j] = x · w[j]ᵀ for the n_w
// weights (all with the same n_in), in one fork/join and with x quantized once. With
// `glu_out`, n_w is 2 (gate, up of equal n_out) and every task computes the same row chunk
// of both, then writes glu_out = swiglu(gate, up) over that chunk while it is hot in cache.
void matmul_impl(const weight_view* ws, int n_w, const float* x, int64_t m, float* const* ys,
                 float* glu_out, thread_pool& pool, const matmul_tuning* tuning) {
    constexpr int max_w = 8;
    if (m <= 0 || n_w <= 0) return;
    const matmul_tuning& tn = tuning ? *tuning : matmul_tuning_active().at(ws[0].type, matmul_m_class_of(m));
    const detail::kernel_table& k = detail::active_kernels();
    const int64_t n_in = ws[0].n_in;
    detail::gemm_fn fns[max_w] = {};
    bool uses_bf16[max_w] = {};
    // Half-precision weights against several rows use bf16 dot products where the CPU has
    // them (compute-bound there) unless the tuning says otherwise; a single row (decode,
    // bandwidth-bound) keeps f32 math.
    const detail::bf16dot_kernel_table* bk = m >= 2 && tn.bf16_dot ? detail::active_bf16dot_kernels() : nullptr;
    bool any_quantized = false, any_kquant = false, any_bf16 = false, ok = n_w <= max_w;
    for (int j = 0; ok && j < n_w; ++j) {
        const weight_view& w = ws[j];
        detail::gemm_fn fn = kernel_for(k, bk, w, &uses_bf16[j]);
        any_bf16 = any_bf16 || uses_bf16[j];
        fns[j] = fn;
        if (!fn || w.n_in != n_in || w.n_in % dtype_info(w.type).block_size != 0) ok = false;
        any_quantized = any_quantized || is_quantized(w.type);
        any_kquant = any_kquant || is_kquant(w.type);
    }
    if (glu_out && (n_w != 2 || ws[0].n_out != ws[1].n_out)) ok = false;
    if (!ok) {
        // Unsupported: callers validate weights at load time (matmul_supported); make a slip
        // loud rather than silently wrong.
        for (int j = 0; j < n_w; ++j)
            if (ys[j]) std::fill(ys[j], ys[j] + m * ws[j].n_out, std::numeric_limits<float>::quiet_NaN());
        if (glu_out) std::fill(glu_out, glu_out + m * ws[0].n_out, std::numeric_limits<float>::quiet_NaN());
        return;
    }
    const int n_threads = pool.n_threads();
    const auto glu = k.swiglu ? k.swiglu : detail::kernels_scalar()->swiglu;

    // Quantize x once for all tasks and all weights.
    detail::q8_rows q8{};
    if (any_quantized) {
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
    detail::q8k_rows q8k{};
    if (any_kquant) {
        q8_scratch& sc = scratch();
        sc.reserve_k(m, n_in);
        const auto quantize_k = k.quantize_q8k_row ? k.quantize_q8k_row : detail::kernels_scalar()->quantize_q8k_row;
        const int64_t nb = n_in / 256;
        auto quantize_row = [&](int64_t i) {
            quantize_k(x + i * n_in, n_in, sc.k_qs.data() + i * n_in, sc.k_d.data() + i * nb,
                       sc.k_bsums.data() + i * nb * 16);
        };
        if (m >= 4 && n_threads > 1) {
            pool.run(m, [&](int64_t i, int) { quantize_row(i); });
        } else {
            for (int64_t i = 0; i < m; ++i) quantize_row(i);
        }
        q8k = {sc.k_qs.data(), sc.k_d.data(), sc.k_bsums.data(), n_in};
    }
    const uint16_t* x_bf16 = nullptr;
    if (any_bf16) {
        std::vector<uint16_t>& xb = bf16_scratch();
        if (xb.size() < size_t(m * n_in)) xb.resize(size_t(m * n_in));
        auto convert_row = [&](int64_t i) { bk->to_bf16_row(x + i * n_in, n_in, xb.data() + i * n_in); };
        if (m >= 4 && n_threads > 1) {
            pool.run(m, [&](int64_t i, int) { convert_row(i); });
        } else {
            for (int64_t i = 0; i < m; ++i) convert_row(i);
        }
        x_bf16 = xb.data();
    }

    // Task geometry: (x row block) × (weight, chunk of its rows). Chunks have one size for
    // all weights, sized from their total rows (a swiglu pair counts once).
    const int n_units = glu_out ? 1 : n_w;
    int64_t total_rows = 0;
    for (int j = 0; j < n_units; ++j) total_rows += ws[j].n_out;
    // x rows per task: at most tn.m_block (default 64: their q8 copy stays in L2). Not for
    // row-major k-quant weights: the AVX-512 kernel orders a row's sums differently in tiles of
    // 16 rows or more (rows in lanes) than below, so the height would change values.
    bool height_sensitive = false;
    for (int j = 0; j < n_w; ++j)
        height_sensitive = height_sensitive || (is_kquant(ws[j].type) && ws[j].layout == weight_layout::row_major);
    const int64_t max_m_block = height_sensitive ? matmul_tuning{}.m_block : std::clamp<int64_t>(tn.m_block, 1, 1 << 16);
    const int64_t n_m_blocks = (m + max_m_block - 1) / max_m_block;
    const int64_t m_block = (m + n_m_blocks - 1) / n_m_blocks;  // balanced block height
    // Aim for ~tn.tasks_per_thread tasks per thread in total, weight-row chunks a multiple of
    // 16 rows (whole groups of interleaved16 weights).
    const int64_t tasks_per_thread = std::clamp<int64_t>(tn.tasks_per_thread, 1, 1024);
    int64_t target_chunks = std::max<int64_t>(1, int64_t(n_threads) * tasks_per_thread / n_m_blocks);
    int64_t chunk = (total_rows + target_chunks - 1) / target_chunks;
    // A task walks its weight rows once per 8 x rows: keep them within tn.l2_kib (default half
    // of a 1 MiB L2).
    if (m > 8 && tn.l2_kib > 0) {
        const int64_t row_bytes = int64_t(dtype_row_bytes(ws[0].type, n_in));
        const int64_t budget = std::min<int64_t>(tn.l2_kib, int64_t(1) << 30) << 10;
        chunk = std::min<int64_t>(chunk, std::max<int64_t>(16, budget / std::max<int64_t>(1, row_bytes)));
    }
    chunk = std::max<int64_t>(16, (chunk + 15) / 16 * 16);
    int64_t chunk_start[max_w + 1] = {0};  // prefix sums of chunks per unit
    for (int j = 0; j < n_units; ++j) chunk_start[j + 1] = chunk_start[j] + (ws[j].n_out + chunk - 1) / chunk;
    const int64_t n_chunks = chunk_start[n_units];

    // swiglu without y_up: the up tile goes to the worker's slot of the scratch, chunk wide.
    float* up_tiles = nullptr;
    const size_t up_tile_floats = size_t(m_block) * size_t(chunk);
    if (glu_out && !ys[1]) {
        std::vector<float>& sc = up_tile_scratch();
        if (sc.size() < up_tile_floats * size_t(n_threads)) sc.resize(up_tile_floats * size_t(n_threads));
        up_tiles = sc.data();
    }

    auto run_tile = [&](int j, int64_t o0, int64_t o1, int64_t i0, int64_t i1, float* y, int64_t ldy) {
        const weight_view& w = ws[j];
        const size_t row_bytes = dtype_row_bytes(w.type, n_in);
        detail::q8_rows q8_block{};
        detail::q8k_rows q8k_block{};
        detail::gemm_tile t{};
        t.w = static_cast<const uint8_t*>(w.data) + size_t(o0) * row_bytes;
        t.w_row_bytes = row_bytes;
        t.n_o = o1 - o0;
        t.n_in = n_in;
        if (is_quantized(w.type)) {
            const int64_t nb = n_in / 32;
            q8_block = {q8.qs + i0 * n_in, q8.d + i0 * nb, q8.s + i0 * nb, n_in};
            t.x = &q8_block;
        } else if (is_kquant(w.type)) {
            const int64_t nb = n_in / 256;
            q8k_block = {q8k.qs + i0 * n_in, q8k.d + i0 * nb, q8k.bsums + i0 * nb * 16, n_in};
            t.x = &q8k_block;
        } else if (uses_bf16[j]) {
            t.x = x_bf16 + i0 * n_in;
        } else {
            t.x = x + i0 * n_in;
        }
        t.x_stride = n_in;
        t.m = i1 - i0;
        t.y = y;
        t.ldy = ldy;
        fns[j](t);
    };
    auto tile = [&](int64_t task, int worker) {
        const int64_t c = task % n_chunks, mb = task / n_chunks;
        int j = 0;
        while (c >= chunk_start[j + 1]) ++j;
        const int64_t o0 = (c - chunk_start[j]) * chunk, o1 = std::min(ws[j].n_out, o0 + chunk);
        const int64_t i0 = mb * m_block, i1 = std::min(m, i0 + m_block);
        const int64_t n_out = ws[j].n_out;
        run_tile(j, o0, o1, i0, i1, ys[j] + i0 * n_out + o0, n_out);
        if (glu_out) {
            // up: into y_up, or (ldy = chunk) into this worker's tile.
            float* up = up_tiles ? up_tiles + size_t(worker) * up_tile_floats : ys[1] + i0 * n_out + o0;
            const int64_t ld_up = up_tiles ? chunk : n_out;
            run_tile(1, o0, o1, i0, i1, up, ld_up);
            for (int64_t i = i0; i < i1; ++i)
                glu(ys[0] + i * n_out + o0, up + (i - i0) * ld_up, glu_out + i * n_out + o0, o1 - o0);
        }
    };
    pool.run(n_chunks * n_m_blocks, tile);
}

}  // namespace

void matmul(const weight_view& w, const float* x, int64_t m, float* y, thread_pool& pool, const matmul_tuning* tuning) {
    if (w.n_out <= 0) return;
    matmul_impl(&w, 1, x, m, &y, nullptr, pool, tuning);
}

void matmul_multi(const weight_view* w, int n_w, const float* x, int64_t m, float* const* y, thread_pool& pool,
                  const matmul_tuning* tuning) {
    matmul_impl(w, n_w, x, m, y, nullptr, pool, tuning);
}

void matmul_swiglu(const weight_view& gate, const weight_view& up, const float* x, int64_t m, float* y_gate,
                   float* y_up, float* out, thread_pool& pool, const matmul_tuning* tuning) {
    const weight_view ws[2] = {gate, up};
    float* const ys[2] = {y_gate, y_up};
    matmul_impl(ws, 2, x, m, ys, out, pool, tuning);
}

}  // namespace kvs::cpu
