#include "reference_kv_quant.h"

#include <algorithm>
#include <cmath>

namespace kvs::test {

namespace {
double as_f16(double x) { return double(f16_to_f32(f32_to_f16(float(std::clamp(x, -65504.0, 65504.0))))); }
// x rounded to the nearest f16 (ties to even) straight from double, after clamping to the f16
// range: the float conversion in between can round a value just off a midpoint onto it, so the
// candidates around the float route's result are compared in double.
double f16_nearest(double x) {
    x = std::clamp(x, -65504.0, 65504.0);
    const uint16_t h0 = f32_to_f16(float(x));
    uint16_t best = h0;
    for (int step : {-1, 1}) {
        const uint16_t h = uint16_t(h0 + step);
        const double v = f16_to_f32(h), b = f16_to_f32(best);
        if (!std::isfinite(v) || (h & 0x8000) != (h0 & 0x8000)) continue;
        const double dv = std::fabs(v - x), db = std::fabs(b - x);
        if (dv < db || (dv == db && (h & 1) == 0)) best = h;
    }
    return f16_to_f32(best);
}
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

namespace {

// One asymmetric run of n values x[i * stride]: its stored scale and min, and per value the code,
// tie margin and decoded value at the same strides.
void kivi_run(int bits, const float* x, int64_t n, int64_t stride, double* a_out, double* m_out, uint8_t* a_tie, int* u,
              double* margin, double* dec) {
    double mn = x[0], mx = x[0];
    for (int64_t i = 1; i < n; ++i) mn = std::min(mn, double(x[i * stride])), mx = std::max(mx, double(x[i * stride]));
    const double levels = double((1 << bits) - 1);
    const double m = f16_nearest(mn);
    const double exact = std::min((mx - m) / levels, 65504.0);
    const double a = f16_nearest(exact);
    *a_out = a;
    *a_tie = 0;
    if (a > 0 && exact != a && exact < 65504.0) {
        // The f16 neighbour on exact's other side, and the midpoint between the two.
        const uint16_t h = f32_to_f16(float(a));
        const double other = f16_to_f32(uint16_t(exact > a ? h + 1 : h - 1));
        *a_tie = std::fabs(exact - (a + other) / 2) <= 0x1p-21 * exact;
    }
    *m_out = m;
    for (int64_t i = 0; i < n; ++i) {
        const size_t j = size_t(i * stride);
        if (a > 0) {
            const double q = (double(x[j]) - m) / a;
            u[j] = int(std::clamp(round_even(q), 0.0, levels));
            // Only ties inside [0, L] decide a code; outside, the clamp does.
            margin[j] = q > -0.5 && q < levels + 0.5 ? std::fabs(q - std::floor(q) - 0.5) : 1.0;
        } else {
            u[j] = 0;
            margin[j] = 1.0;
        }
        dec[j] = a * u[j] + m;
    }
}

kivi_reference kivi_alloc(int64_t G, int64_t head_dim, size_t n_params) {
    kivi_reference r;
    r.tokens = G;
    r.head_dim = head_dim;
    const size_t n = size_t(G * head_dim);
    r.codes.assign(n, 0);
    r.tie_margin.assign(n, 1.0);
    r.decoded.assign(n, 0.0);
    r.scale.assign(n_params, 0.0);
    r.min.assign(n_params, 0.0);
    r.scale_tie.assign(n_params, 0);
    return r;
}

}  // namespace

kivi_reference reference_kivi_keys(int bits, const float* k, int64_t G, int64_t head_dim) {
    kivi_reference r = kivi_alloc(G, head_dim, size_t(head_dim));
    for (int64_t d = 0; d < head_dim; ++d)
        kivi_run(bits, k + d, G, head_dim, &r.scale[size_t(d)], &r.min[size_t(d)], &r.scale_tie[size_t(d)], r.codes.data() + d,
                 r.tie_margin.data() + d, r.decoded.data() + d);
    return r;
}

kivi_reference reference_kivi_values(int bits, const float* v, int64_t G, int64_t head_dim, int64_t group) {
    const int64_t ng = head_dim / group;
    kivi_reference r = kivi_alloc(G, head_dim, size_t(G * ng));
    for (int64_t t = 0; t < G; ++t)
        for (int64_t g = 0; g < ng; ++g) {
            const int64_t off = t * head_dim + g * group;
            const size_t i = size_t(t * ng + g);
            kivi_run(bits, v + off, group, 1, &r.scale[i], &r.min[i], &r.scale_tie[i], r.codes.data() + off, r.tie_margin.data() + off,
                     r.decoded.data() + off);
        }
    return r;
}

}  // namespace kvs::test
