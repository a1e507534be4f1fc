// swiglu, softmax (with log-sum-exp) and the dispatched float dot product.
#include <cmath>
#include <limits>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"

namespace kvs::cpu {

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
    const detail::kernel_table& k = detail::active_kernels();
    (k.swiglu ? k.swiglu : detail::kernels_scalar()->swiglu)(gate, up, out, n);
}

float softmax(float* x, int64_t n) {
    if (n <= 0) return -std::numeric_limits<float>::infinity();
    float mx = x[0];
    for (int64_t i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
    if (mx == -std::numeric_limits<float>::infinity()) {
        // Every score masked: no probability mass anywhere. Zeros and an LSE of -inf make the
        // state a neutral element when merged with other (O, LSE) states.
        for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
        return mx;
    }
    // Subtracting the max keeps every exponent <= 0 (no overflow); the sum is >= 1.
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        x[i] = std::exp(x[i] - mx);
        sum += x[i];
    }
    const float inv = float(1.0 / sum);
    for (int64_t i = 0; i < n; ++i) x[i] *= inv;
    return float(std::log(sum)) + mx;
}

float dot_f32(const float* a, const float* b, int64_t n) {
    return detail::active_kernels().dot_f32(a, b, n);
}

}  // namespace kvs::cpu
