// A ragged batch: a flat list of tokens from any number of sequences, no padding
// (architecture.md, invariant 1). Prefill chunks and decode tokens ride together.
#pragma once

#include <cstdint>
#include <vector>

namespace kvs {

struct batch {
    std::vector<int32_t> tokens;     // (n) token ids
    std::vector<int32_t> positions;  // (n) RoPE positions
    std::vector<int32_t> seq_ids;    // (n) kv_cache sequence of each token
    std::vector<int32_t> slots;      // (n) KV slot the token's K/V are written to; it attends to slots [0, slot]
    std::vector<uint8_t> want_logits;  // (n) 1: return this row's logits (in row order)
    // (n, or empty) 1: a prompt token. Quest reads prompt rows densely however the prompt is
    // chunked, and selects pages only for the other rows (generated tokens) that are their
    // sequence's only row in the pass. Empty: any row that is its sequence's only one selects
    // (a session's decode; the scheduler always fills it).
    std::vector<uint8_t> prompt;

    int64_t size() const { return int64_t(tokens.size()); }
    int64_t n_logits() const {
        int64_t n = 0;
        for (uint8_t w : want_logits) n += w;
        return n;
    }
    void clear() {
        tokens.clear();
        positions.clear();
        seq_ids.clear();
        slots.clear();
        want_logits.clear();
        prompt.clear();
    }
    // Dense cache: the slot is the position.
    void add(int32_t token, int32_t pos, int32_t seq, bool logits) { add(token, pos, seq, logits, pos); }
    void add(int32_t token, int32_t pos, int32_t seq, bool logits, int32_t slot) {
        tokens.push_back(token);
        positions.push_back(pos);
        seq_ids.push_back(seq);
        slots.push_back(slot);
        want_logits.push_back(logits ? 1 : 0);
    }
};

}  // namespace kvs
