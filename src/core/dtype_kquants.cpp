// K-quant block formats (q4_K, q5_K, q6_K): scalar quantizers and dequantizers.
//
// Layouts are ggml's byte for byte (see dtype.h), so blocks written here decode identically
// in ggml and GGUF files from llama.cpp load unchanged. The quantizer is an error-minimizing
// search of its own:
//   1. Each sub-block gets the scale (and, for q4_K/q5_K, the min) that minimizes the weighted
//      squared error over a small grid of candidate code mappings, each refined by a
//      closed-form weighted least-squares fit of (scale, offset) to the codes it produces.
//   2. The sub-block scales are quantized against one f16 super-block scale (6-bit unsigned
//      for q4_K/q5_K, 8-bit signed for q6_K).
//   3. Codes are recomputed against the scales as they will be decoded (f16 and 6/8-bit
//      rounding included), so the stored codes are the nearest ones for the stored scales.
#include "core/dtype_kquants.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace kvs {

void kquant_scale_min(const uint8_t* s, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; ++j) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = uint8_t((s[j + 8] & 15) | ((s[j] >> 6) << 4));
        m[j + 4] = uint8_t((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

namespace detail {

namespace {

int round_int(float v) { return int(std::nearbyint(v)); }

// The inverse of kquant_scale_min: packs eight 6-bit (scale, min) pairs into 12 bytes.
void pack_scale_min(const uint8_t sc[8], const uint8_t m[8], uint8_t s[12]) {
    for (int j = 0; j < 4; ++j) {
        s[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = uint8_t((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        s[j + 8] = uint8_t((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

// Importance of each element in the sub-block fits: the error on large elements matters
// more (they dominate dot products), but small ones must not be ignored altogether.
void fit_weights(const float* x, int n, float* w) {
    float ss = 0;
    for (int i = 0; i < n; ++i) ss += x[i] * x[i];
    const float rms = std::sqrt(ss / float(n));
    for (int i = 0; i < n; ++i) w[i] = rms + std::fabs(x[i]);
}

// Asymmetric sub-block fit: x ≈ scale · L - min with integer L in [0, nmax], scale ≥ 0 and
// min ≥ 0 (the format stores the offset as a subtracted non-negative min, so the offset is
// clamped to ≤ 0, i.e. the range always includes 0).
//
// Candidates map [lo, hi] onto nmax + δ steps (δ in [-1, 1] by 0.1, so the extreme codes may
// be slightly under- or over-used). For the codes of each candidate, (scale, offset) is the
// weighted least-squares solution of the 2×2 normal equations; the candidate with the least
// weighted error wins. The error is evaluated from the accumulated moments in closed form.
void fit_scale_min(const float* x, int n, int nmax, float* scale, float* min) {
    float lo = 0.0f, hi = x[0];
    for (int i = 0; i < n; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
    }
    if (!(hi > lo)) {  // constant non-positive block (or zeros)
        *scale = 0.0f;
        *min = -lo;
        return;
    }
    float w[32];
    fit_weights(x, n, w);
    double sw = 0, swx = 0, swxx = 0;
    for (int i = 0; i < n; ++i) {
        sw += w[i];
        swx += double(w[i]) * x[i];
        swxx += double(w[i]) * x[i] * x[i];
    }
    // Start from plain min/max, evaluated like the candidates.
    float best_a = (hi - lo) / float(nmax), best_b = lo;
    double best_err = -1;
    for (int k = -10; k <= 10; ++k) {
        const float iscale = (float(nmax) + 0.1f * float(k)) / (hi - lo);
        double sl = 0, sll = 0, slx = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::clamp(round_int(iscale * (x[i] - lo)), 0, nmax);
            sl += w[i] * l;
            sll += double(w[i]) * l * l;
            slx += double(w[i]) * l * x[i];
        }
        const double det = sw * sll - sl * sl;
        if (det <= 0) continue;
        double a = (sw * slx - sl * swx) / det, b = (sll * swx - sl * slx) / det;
        if (b > 0) {  // the offset may not be positive: refit the scale alone with b = 0
            b = 0;
            a = slx / sll;
        }
        if (!(a > 0)) continue;
        // Σ w (a L + b - x)² expanded into the moments.
        const double err = a * a * sll + 2 * a * b * sl + b * b * sw - 2 * a * slx - 2 * b * swx + swxx;
        if (best_err < 0 || err < best_err) {
            best_err = err;
            best_a = float(a);
            best_b = float(b);
        }
    }
    *scale = best_a;
    *min = -best_b;
}

// Symmetric sub-block fit for q6_K: x ≈ scale · L with integer L in [-32, 31] (scale of
// either sign). Candidates map the element of largest magnitude to about -32 (the side with
// one more code); each gets the least-squares scale Σ w x L / Σ w L², and the candidate that
// removes the most weighted energy, (Σ w x L)² / Σ w L², wins.
float fit_scale_sym(const float* x, int n) {
    float vmax = 0.0f;
    for (int i = 0; i < n; ++i)
        if (std::fabs(x[i]) > std::fabs(vmax)) vmax = x[i];
    if (vmax == 0.0f) return 0.0f;
    float best_scale = -vmax / 32.0f;
    double best_gain = -1;
    for (int k = -10; k <= 10; ++k) {
        const float iscale = -(32.0f + 0.1f * float(k)) / vmax;
        double slx = 0, sll = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::clamp(round_int(iscale * x[i]), -32, 31);
            const double w = double(x[i]) * x[i];
            slx += w * l * x[i];
            sll += w * l * l;
        }
        if (sll <= 0) continue;
        const double gain = slx * slx / sll;
        if (gain > best_gain) {
            best_gain = gain;
            best_scale = float(slx / sll);
        }
    }
    return best_scale;
}

// One q4_K / q5_K super-block: fits the 8 sub-blocks, quantizes their scales and mins to 6
// bits under f16 super-scales, and writes the codes L (256, in [0, nmax]) for those.
void quantize_scale_min_block(const float* x, int nmax, uint16_t* d, uint16_t* dmin, uint8_t scales[12], uint8_t* L) {
    float sc[8], mn[8];
    float max_sc = 0, max_mn = 0;
    for (int j = 0; j < 8; ++j) {
        fit_scale_min(x + 32 * j, 32, nmax, &sc[j], &mn[j]);
        max_sc = std::max(max_sc, sc[j]);
        max_mn = std::max(max_mn, mn[j]);
    }
    *d = f32_to_f16(max_sc / 63.0f);
    *dmin = f32_to_f16(max_mn / 63.0f);
    const float inv_sc = max_sc > 0 ? 63.0f / max_sc : 0.0f, inv_mn = max_mn > 0 ? 63.0f / max_mn : 0.0f;
    uint8_t qsc[8], qmn[8];
    for (int j = 0; j < 8; ++j) {
        qsc[j] = uint8_t(std::min(63, round_int(inv_sc * sc[j])));
        qmn[j] = uint8_t(std::min(63, round_int(inv_mn * mn[j])));
    }
    pack_scale_min(qsc, qmn, scales);
    const float df = f16_to_f32(*d), dmf = f16_to_f32(*dmin);
    for (int j = 0; j < 8; ++j) {
        const float a = df * float(qsc[j]), m = dmf * float(qmn[j]);
        const float ia = a > 0 ? 1.0f / a : 0.0f;
        for (int i = 0; i < 32; ++i) L[32 * j + i] = uint8_t(std::clamp(round_int((x[32 * j + i] + m) * ia), 0, nmax));
    }
}

// Low nibbles of codes L (256) in q4_K's order: byte 32 c + l holds 64 c + l and 64 c + 32 + l.
void pack_nibbles(const uint8_t* L, uint8_t qs[128]) {
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) qs[32 * c + l] = uint8_t((L[64 * c + l] & 15) | ((L[64 * c + 32 + l] & 15) << 4));
}

}  // namespace

void quantize_q4_k(const float* x, block_q4_k* y, int64_t nb) {
    uint8_t L[qk_k];
    for (int64_t b = 0; b < nb; ++b, x += qk_k) {
        quantize_scale_min_block(x, 15, &y[b].d, &y[b].dmin, y[b].scales, L);
        pack_nibbles(L, y[b].qs);
    }
}

void quantize_q5_k(const float* x, block_q5_k* y, int64_t nb) {
    uint8_t L[qk_k];
    for (int64_t b = 0; b < nb; ++b, x += qk_k) {
        quantize_scale_min_block(x, 31, &y[b].d, &y[b].dmin, y[b].scales, L);
        pack_nibbles(L, y[b].qs);
        std::memset(y[b].qh, 0, sizeof(y[b].qh));
        for (int j = 0; j < 8; ++j)
            for (int l = 0; l < 32; ++l) y[b].qh[l] |= uint8_t(((L[32 * j + l] >> 4) & 1) << j);
    }
}

void quantize_q6_k(const float* x, block_q6_k* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += qk_k) {
        float sc[16], amax = 0;
        for (int j = 0; j < 16; ++j) {
            sc[j] = fit_scale_sym(x + 16 * j, 16);
            amax = std::max(amax, std::fabs(sc[j]));
        }
        y[b].d = f32_to_f16(amax / 127.0f);
        const float inv = amax > 0 ? 127.0f / amax : 0.0f;
        const float df = f16_to_f32(y[b].d);
        uint8_t L[qk_k];
        for (int j = 0; j < 16; ++j) {
            const int q = std::clamp(round_int(inv * sc[j]), -127, 127);
            y[b].scales[j] = int8_t(q);
            const float a = df * float(q);
            const float ia = a != 0 ? 1.0f / a : 0.0f;
            for (int i = 0; i < 16; ++i) L[16 * j + i] = uint8_t(std::clamp(round_int(x[16 * j + i] * ia), -32, 31) + 32);
        }
        for (int h = 0; h < 2; ++h) {
            const uint8_t* Lh = L + 128 * h;
            uint8_t* ql = y[b].ql + 64 * h;
            uint8_t* qh = y[b].qh + 32 * h;
            for (int l = 0; l < 32; ++l) {
                ql[l] = uint8_t((Lh[l] & 15) | ((Lh[64 + l] & 15) << 4));
                ql[32 + l] = uint8_t((Lh[32 + l] & 15) | ((Lh[96 + l] & 15) << 4));
                qh[l] = uint8_t((Lh[l] >> 4) | ((Lh[32 + l] >> 4) << 2) | ((Lh[64 + l] >> 4) << 4) | ((Lh[96 + l] >> 4) << 6));
            }
        }
    }
}

void dequantize_q4_k(const block_q4_k* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, y += qk_k) {
        const float d = f16_to_f32(x[b].d), dmin = f16_to_f32(x[b].dmin);
        uint8_t sc[8], m[8];
        kquant_scale_min(x[b].scales, sc, m);
        for (int c = 0; c < 4; ++c) {
            const float d0 = d * sc[2 * c], m0 = dmin * m[2 * c], d1 = d * sc[2 * c + 1], m1 = dmin * m[2 * c + 1];
            for (int l = 0; l < 32; ++l) {
                const uint8_t q = x[b].qs[32 * c + l];
                y[64 * c + l] = d0 * float(q & 15) - m0;
                y[64 * c + 32 + l] = d1 * float(q >> 4) - m1;
            }
        }
    }
}

void dequantize_q5_k(const block_q5_k* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, y += qk_k) {
        const float d = f16_to_f32(x[b].d), dmin = f16_to_f32(x[b].dmin);
        uint8_t sc[8], m[8];
        kquant_scale_min(x[b].scales, sc, m);
        for (int c = 0; c < 4; ++c) {
            const int j0 = 2 * c, j1 = 2 * c + 1;
            const float d0 = d * sc[j0], m0 = dmin * m[j0], d1 = d * sc[j1], m1 = dmin * m[j1];
            for (int l = 0; l < 32; ++l) {
                const uint8_t q = x[b].qs[32 * c + l], h = x[b].qh[l];
                y[64 * c + l] = d0 * float((q & 15) | (((h >> j0) & 1) << 4)) - m0;
                y[64 * c + 32 + l] = d1 * float((q >> 4) | (((h >> j1) & 1) << 4)) - m1;
            }
        }
    }
}

void dequantize_q6_k(const block_q6_k* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, y += qk_k) {
        const float d = f16_to_f32(x[b].d);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* ql = x[b].ql + 64 * h;
            const uint8_t* qh = x[b].qh + 32 * h;
            const int8_t* sc = x[b].scales + 8 * h;
            float* yh = y + 128 * h;
            for (int l = 0; l < 32; ++l) {
                const int q0 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q1 = ((ql[32 + l] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q3 = ((ql[32 + l] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                const int is = l / 16;
                yh[l] = d * float(sc[is + 0]) * float(q0);
                yh[32 + l] = d * float(sc[is + 2]) * float(q1);
                yh[64 + l] = d * float(sc[is + 4]) * float(q2);
                yh[96 + l] = d * float(sc[is + 6]) * float(q3);
            }
        }
    }
}

}  // namespace detail

}  // namespace kvs
