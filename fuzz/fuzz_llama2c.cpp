// libFuzzer target for the llama2.c importer's parsers (gguf/llama2c.h). Input: byte 0 picks
// the parser. Even: the rest is a checkpoint, parsed by llama2c_parse_config (its header must
// agree with the size; the implied layout must never overflow). Odd: bytes 1..4 are the
// vocabulary size the checkpoint header would claim (any int32, billions included) and the rest
// is a tokenizer file; parsing must fail with a message or return exactly that many tokens,
// and must never allocate beyond what the file can hold.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "gguf/llama2c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const bool tokenizer = data[0] & 1;
    data += 1, size -= 1;
    if (!tokenizer) {
        std::unique_ptr<uint8_t[]> buf(new uint8_t[size ? size : 1]);  // exact size: over-reads show
        if (size) std::memcpy(buf.get(), data, size);
        auto c = kvs::llama2c_parse_config(buf.get(), size);
        if (!c.is_ok()) {
            if (c.message().empty()) __builtin_trap();
            return 0;
        }
        const kvs::llama2c_config& cfg = c.value();
        if (cfg.expected_file_size() != size || cfg.dim % cfg.n_heads != 0 || cfg.head_size() % 2 != 0) __builtin_trap();
        return 0;
    }
    if (size < 4) return 0;
    int32_t n_vocab = 0;
    std::memcpy(&n_vocab, data, 4);
    data += 4, size -= 4;
    std::unique_ptr<uint8_t[]> buf(new uint8_t[size ? size : 1]);
    if (size) std::memcpy(buf.get(), data, size);
    auto v = kvs::llama2c_parse_tokenizer(buf.get(), size, n_vocab);
    if (!v.is_ok()) {
        if (v.message().empty()) __builtin_trap();
        return 0;
    }
    const kvs::llama2c_vocab& voc = v.value();
    if (voc.tokens.size() != size_t(n_vocab) || voc.scores.size() != voc.tokens.size() || voc.types.size() != voc.tokens.size())
        __builtin_trap();
    return 0;
}
