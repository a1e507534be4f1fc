// YaRN RoPE scaling (Peng et al., 2023) as ggml computes it (rope_yarn, ext_factor 1,
// beta_fast 32, beta_slow 1), for models whose files ask for it (rope.scaling.type "yarn").
// Dimension pairs rotating faster than the original context resolves (below the low correction
// dim) keep their frequency, those rotating slower (above the high one) are interpolated by
// freq_scale = 1 / factor, and the ones between blend linearly. The rotated values are not
// magnitude-scaled: the model scales its attention logits instead (model_hparams::yarn_log_mul).
#pragma once

#include <cstdint>

namespace kvs {

struct yarn_rope {
    int64_t n_rot = 0;       // rotated dims (pairs: n_rot / 2)
    float freq_base = 10000.0f;
    float freq_scale = 1.0f; // 1 / factor
    float corr_low = 0.0f;   // pairs j < corr_low keep their frequency (extrapolation)
    float corr_high = 0.0f;  // pairs j > corr_high are interpolated; a linear ramp between
    // The correction dims for a model trained on n_ctx_orig tokens (ggml_rope_yarn_corr_dims).
    static yarn_rope make(int64_t n_rot, float freq_base, float freq_scale, int64_t n_ctx_orig);
    // cos_t, sin_t (n_rot / 2) of position pos, for cpu::rope_apply.
    void angles(int64_t pos, float* cos_t, float* sin_t) const;
};

}  // namespace kvs
