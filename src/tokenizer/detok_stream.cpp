#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace kvs {

std::string detok_stream::push(int32_t id) {
    tok_->append_piece(id, render_special_, at_start_, pending_);
    std::string out;
    utf8::drain_valid(pending_, out, /*final=*/false);
    return out;
}

std::string detok_stream::flush() {
    std::string out;
    utf8::drain_valid(pending_, out, /*final=*/true);
    return out;
}

}  // namespace kvs
