// Test support: the float64 building blocks the references share (straight from the
// definitions, no engine code).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace kvs::test {

// y (n_out) = W (n_out, n_in) x, W's rows contiguous from `w`, n_in = x.size().
inline std::vector<double> ref_matvec(const double* w, const std::vector<double>& x, int64_t n_out) {
    const int64_t n_in = int64_t(x.size());
    std::vector<double> y(size_t(n_out), 0.0);
    for (int64_t o = 0; o < n_out; ++o) {
        double acc = 0;
        for (int64_t i = 0; i < n_in; ++i) acc += w[o * n_in + i] * x[size_t(i)];
        y[size_t(o)] = acc;
    }
    return y;
}

// y = x / sqrt(mean(x²) + eps) · w.
inline std::vector<double> ref_rmsnorm(const std::vector<double>& x, const std::vector<double>& w, double eps) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / double(x.size()) + eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w[i];
    return y;
}

}  // namespace kvs::test
