#include "reference_kv_quant.h"

#include <algorithm>
#include <cmath>

namespace kvs::test {

namespace {
double as_f16(double x) { return double(f16_to_f32(f32_to_f16(float(std::clamp(x, -65504.0, 65504.0))))); }
// Round half to even, as the engine's quantizers do.
double round_even(double x) { return std::nearbyint(x); }
}  // namespace

quant_group reference_quantize_group(dtype t, const float* x, int64_t n) {
    quant_group g;
    g.codes.resize(size_t(n));
    g.decoded.resize(size_t(n));
    if (t == dtype::q8_0) {
        double amax = 0;
        for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(double(x[i])));
        g.d = as_f16(amax / 127.0);
        for (int64_t i = 0; i < n; ++i) {
            g.codes[size_t(i)] = g.d > 0 ? int(std::clamp(round_even(x[i] / g.d), -127.0, 127.0)) : 0;
            g.decoded[size_t(i)] = g.d * g.codes[size_t(i)];
        }
    } else if (t == dtype::q4_0) {
        // The element of largest magnitude, with its sign, maps to -8.
        double vmax = 0;
        for (int64_t i = 0; i < n; ++i)
            if (std::fabs(double(x[i])) > std::fabs(vmax)) vmax = x[i];
        g.d = as_f16(vmax / -8.0);
        for (int64_t i = 0; i < n; ++i) {
            g.codes[size_t(i)] = g.d != 0 ? int(std::clamp(round_even(x[i] / g.d), -8.0, 7.0)) : 0;
            g.decoded[size_t(i)] = g.d * g.codes[size_t(i)];
        }
    } else {  // q4_1
        double mn = x[0], mx = x[0];
        for (int64_t i = 1; i < n; ++i) mn = std::min(mn, double(x[i])), mx = std::max(mx, double(x[i]));
        g.m = as_f16(mn);
        g.d = as_f16((mx - g.m) / 15.0);
        for (int64_t i = 0; i < n; ++i) {
            g.codes[size_t(i)] = g.d > 0 ? int(std::clamp(round_even((x[i] - g.m) / g.d), 0.0, 15.0)) : 0;
            g.decoded[size_t(i)] = g.d * g.codes[size_t(i)] + g.m;
        }
    }
    return g;
}

std::vector<double> reference_quantize_row(dtype t, const float* x, int64_t head_dim) {
    const int64_t gs = head_dim < 32 ? head_dim : 32;
    std::vector<double> out;
    for (int64_t g0 = 0; g0 < head_dim; g0 += gs) {
        quant_group q = reference_quantize_group(t, x + g0, gs);
        out.insert(out.end(), q.decoded.begin(), q.decoded.end());
    }
    return out;
}

}  // namespace kvs::test
