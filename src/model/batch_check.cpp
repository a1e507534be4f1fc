// Batch validation shared by the forward passes (batch_check.h).
#include "model/batch_check.h"

namespace kvs {

status check_batch(const batch& b, const kv_cache& kv, int64_t n_vocab, int64_t max_tokens, int64_t max_logits) {
    const int64_t n = b.size();
    if (b.positions.size() != size_t(n) || b.seq_ids.size() != size_t(n) || b.slots.size() != size_t(n) ||
        b.want_logits.size() != size_t(n))
        return status::error("batch: tokens, positions, seq_ids, slots and want_logits differ in length");
    if (!b.prompt.empty() && b.prompt.size() != size_t(n)) return status::error("batch: prompt flags are neither empty nor one per token");
    if (n > max_tokens) return status::error(strfmt("batch of %lld tokens exceeds the forward state's %lld", (long long)n, (long long)max_tokens));
    const int64_t n_out = b.n_logits();
    if (n_out > max_logits)
        return status::error(strfmt("batch asks for %lld logit rows, more than the forward state's %lld", (long long)n_out, (long long)max_logits));
    for (int64_t i = 0; i < n; ++i) {
        if (b.tokens[size_t(i)] < 0 || b.tokens[size_t(i)] >= n_vocab)
            return status::error(strfmt("batch row %lld: token id %d is outside the vocabulary (0..%lld)", (long long)i, b.tokens[size_t(i)],
                                        (long long)n_vocab - 1));
        const int32_t s = b.seq_ids[size_t(i)];
        if (!kv.seq_exists(s)) return status::error(strfmt("batch row %lld: sequence %d does not exist", (long long)i, s));
        if (!kv.seq_holds(s, b.slots[size_t(i)]))
            return status::error(strfmt("batch row %lld: slot %d of sequence %d is not reserved", (long long)i, b.slots[size_t(i)], s));
        if (b.positions[size_t(i)] < 0) return status::error(strfmt("batch row %lld: negative position", (long long)i));
    }
    return status::ok();
}

result<span_layers> check_layer_span(const layer_span& span, int64_t n_layer, const batch& b, const kv_cache& kv) {
    span_layers l{span.begin, span.end < 0 ? n_layer : span.end};
    if (l.begin < 0 || l.begin >= l.end || l.end > n_layer)
        return status::error(strfmt("layer span [%lld, %lld) is not within the model's %lld layers", (long long)l.begin, (long long)l.end,
                                    (long long)n_layer));
    if (l.begin > 0 && !span.hidden_in) return status::error("a layer span starting past layer 0 needs the hidden states entering it");
    l.partial = l.begin > 0 || l.end < n_layer;
    for (int64_t i = 0; i < b.size() && l.partial; ++i)
        if (kv.seq_policy(b.seq_ids[size_t(i)]).kind == kv_policy_kind::h2o)
            return status::error("a layer span cannot run H2O sequences (they cut back after the last layer)");
    return l;
}

}  // namespace kvs
