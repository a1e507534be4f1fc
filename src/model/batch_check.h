// What every family's forward pass checks of a batch before it touches any state: the arrays
// agree in length, the batch fits the forward state, and every row's token, sequence, slot and
// position are valid in the cache. Errors name the row and what is wrong.
#pragma once

#include <cstdint>

#include "core/status.h"
#include "kv/kv_cache.h"
#include "model/batch.h"
#include "model/language_model.h"

namespace kvs {

status check_batch(const batch& b, const kv_cache& kv, int64_t n_vocab, int64_t max_tokens, int64_t max_logits);

// The layers [span_layers.begin, span_layers.end) a pass over `span` runs, for a batch that
// passed check_batch: within the model's n_layer layers, with the hidden states entering it when
// it starts past layer 0, and no H2O sequence in a partial span (H2O cuts back after the last
// layer).
struct span_layers {
    int64_t begin = 0, end = 0;
    bool partial = false;  // not the whole layer stack
};
result<span_layers> check_layer_span(const layer_span& span, int64_t n_layer, const batch& b, const kv_cache& kv);

}  // namespace kvs
