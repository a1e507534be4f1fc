// rmsnorm and rotary position embedding (RoPE). Both are memory-light next to matmul, so
// they are plain loops the compiler vectorizes, with explicit partial sums where a float
// reduction would otherwise stay serial.
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace kvs::cpu {

void rmsnorm(const float* x, const float* weight, float* y, int64_t n, float eps) {
    // Mean of squares with 8 partial sums (reassociation the compiler may not do itself).
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; ++j) part[j] += x[i + j] * x[i + j];
    }
    for (; i < n; ++i) part[0] += x[i] * x[i];
    float ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    const float scale = 1.0f / std::sqrt(ss / float(n > 0 ? n : 1) + eps);
    for (int64_t k = 0; k < n; ++k) y[k] = x[k] * scale * weight[k];
}

void add_rmsnorm(float* x, const float* delta, const float* weight, float* y, int64_t n, float eps) {
    for (int64_t k = 0; k < n; ++k) x[k] += delta[k];
    rmsnorm(x, weight, y, n, eps);
}

void rope_angles(int64_t n_rot, int64_t pos, float freq_base, float freq_scale, float* cos_t, float* sin_t) {
    // theta_i = pos · freq_scale · freq_base^(-2i / n_rot), computed in double (the angle grows
    // with pos; float would lose ~pos·2^-24 rad).
    for (int64_t i = 0; i < n_rot / 2; ++i) {
        double theta = double(pos) * double(freq_scale) * std::pow(double(freq_base), -2.0 * double(i) / double(n_rot));
        cos_t[i] = float(std::cos(theta));
        sin_t[i] = float(std::sin(theta));
    }
}

void rope_apply(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, const float* c, const float* s,
                rope_layout layout) {
    if (n_rot > head_dim) n_rot = head_dim;
    const int64_t n_pairs = n_rot / 2;
    for (int64_t h = 0; h < n_head; ++h) {
        float* v = x + h * head_dim;  // (head_dim)
        // Pair (p, q) rotates by theta_i: (x_p, x_q) ← (x_p cos − x_q sin, x_p sin + x_q cos).
        if (layout == rope_layout::normal) {
            for (int64_t i = 0; i < n_pairs; ++i) {
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c[i] - x1 * s[i];
                v[2 * i + 1] = x0 * s[i] + x1 * c[i];
            }
        } else {
            for (int64_t i = 0; i < n_pairs; ++i) {
                float x0 = v[i], x1 = v[i + n_pairs];
                v[i] = x0 * c[i] - x1 * s[i];
                v[i + n_pairs] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

void rope(float* x, int64_t n_head, int64_t head_dim, int64_t n_rot, int64_t pos,
          float freq_base, float freq_scale, rope_layout layout) {
    if (n_rot > head_dim) n_rot = head_dim;
    const int64_t n_pairs = n_rot / 2;
    if (n_pairs <= 0) return;
    // Up to 256 pairs live on the stack; wider rotations (rare) use a heap buffer.
    constexpr int64_t n_stack = 256;
    float c_stack[n_stack], s_stack[n_stack];
    std::vector<float> heap;
    float* c = c_stack;
    float* s = s_stack;
    if (n_pairs > n_stack) {
        heap.resize(size_t(2 * n_pairs));
        c = heap.data();
        s = heap.data() + n_pairs;
    }
    rope_angles(n_rot, pos, freq_base, freq_scale, c, s);
    rope_apply(x, n_head, head_dim, n_rot, c, s, layout);
}

}  // namespace kvs::cpu
