// YaRN RoPE angles (rope_yarn.h).
#include "model/rope_yarn.h"

#include <algorithm>
#include <cmath>

namespace kvs {

namespace {

// The dim (of n_rot) whose wavelength makes n_rotations turns over n_ctx_orig tokens.
float corr_dim(int64_t n_rot, int64_t n_ctx_orig, float n_rotations, float base) {
    return float(n_rot) * std::log(float(n_ctx_orig) / (n_rotations * 2.0f * float(M_PI))) / (2.0f * std::log(base));
}

}  // namespace

yarn_rope yarn_rope::make(int64_t n_rot, float freq_base, float freq_scale, int64_t n_ctx_orig) {
    yarn_rope y;
    y.n_rot = n_rot;
    y.freq_base = freq_base;
    y.freq_scale = freq_scale;
    y.corr_low = std::max(0.0f, std::floor(corr_dim(n_rot, n_ctx_orig, 32.0f, freq_base)));
    y.corr_high = std::min(float(n_rot - 1), std::ceil(corr_dim(n_rot, n_ctx_orig, 1.0f, freq_base)));
    return y;
}

void yarn_rope::angles(int64_t pos, float* cos_t, float* sin_t) const {
    // In double, as cpu::rope_angles: the angle grows with pos.
    for (int64_t j = 0; j < n_rot / 2; ++j) {
        const double theta_extrap = double(pos) * std::pow(double(freq_base), -2.0 * double(j) / double(n_rot));
        const double theta_interp = double(freq_scale) * theta_extrap;
        const double y = (double(j) - double(corr_low)) / std::max(0.001, double(corr_high) - double(corr_low));
        const double ramp = 1.0 - std::min(1.0, std::max(0.0, y));
        const double theta = theta_interp * (1.0 - ramp) + theta_extrap * ramp;
        cos_t[j] = float(std::cos(theta));
        sin_t[j] = float(std::sin(theta));
    }
}

}  // namespace kvs
