// Float64-accumulating scalar references for the kernels in ops.h. Deliberately simple:
// they define what the fast paths must compute, and the tests compare against them.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"

namespace kvs::cpu::ref {

// Dequantizes each weight row with the dtype's scalar reference and accumulates the dot
// with the (unquantized) x in double.
void matmul(const weight_view& w, const float* x, int64_t m, float* y) {
    std::vector<float> row(size_t(w.n_in));  // (n_in)
    const size_t row_bytes = dtype_row_bytes(w.type, w.n_in);
    const auto* base = static_cast<const uint8_t*>(w.data);
    for (int64_t o = 0; o < w.n_out; ++o) {
        if (!dequantize_row(w.type, base + size_t(o) * row_bytes, row.data(), w.n_in)) {
            for (int64_t i = 0; i < m; ++i) y[i * w.n_out + o] = std::numeric_limits<float>::quiet_NaN();
            continue;
        }
        for (int64_t i = 0; i < m; ++i) {
            double acc = 0.0;
            for (int64_t k = 0; k < w.n_in; ++k) acc += double(row[size_t(k)]) * double(x[i * w.n_in + k]);
            y[i * w.n_out + o] = float(acc);
        }
    }
}

void rmsnorm(const float* x, const float* weight, float* y, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
    double scale = 1.0 / std::sqrt(ss / double(n > 0 ? n : 1) + double(eps));
    for (int64_t i = 0; i < n; ++i) y[i] = float(double(x[i]) * scale * double(weight[i]));
}

void rope(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos,
          float freq_base, float freq_scale, rope_layout layout) {
    if (n_rot > head_dim) n_rot = head_dim;
    const int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_head; ++h) {
        float* v = x + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
            double theta = double(pos) * double(freq_scale) *
                           std::pow(double(freq_base), -2.0 * double(i) / double(n_rot));
            int64_t p = layout == rope_layout::normal ? 2 * i : i;
            int64_t q = layout == rope_layout::normal ? 2 * i + 1 : i + half;
            double x0 = v[p], x1 = v[q];
            v[p] = float(x0 * std::cos(theta) - x1 * std::sin(theta));
            v[q] = float(x0 * std::sin(theta) + x1 * std::cos(theta));
        }
    }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        double g = gate[i];
        out[i] = float(g / (1.0 + std::exp(-g)) * double(up[i]));
    }
}

float softmax(float* x, int64_t n) {
    if (n <= 0) return -std::numeric_limits<float>::infinity();
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, double(x[i]));
    if (mx == -std::numeric_limits<double>::infinity()) {
        for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
        return float(mx);
    }
    std::vector<double> e(static_cast<size_t>(n));
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += (e[size_t(i)] = std::exp(double(x[i]) - mx));
    for (int64_t i = 0; i < n; ++i) x[i] = float(e[size_t(i)] / sum);
    return float(std::log(sum) + mx);
}

}  // namespace kvs::cpu::ref
