// What every family's forward pass checks of a batch before it touches any state: the arrays
// agree in length, the batch fits the forward state, and every row's token, sequence, slot and
// position are valid in the cache. Errors name the row and what is wrong.
#pragma once

#include <cstdint>

#include "core/status.h"
#include "kv/kv_cache.h"
#include "model/batch.h"

namespace kvs {

status check_batch(const batch& b, const kv_cache& kv, int64_t n_vocab, int64_t max_tokens, int64_t max_logits);

}  // namespace kvs
