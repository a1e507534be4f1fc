// llama2.c importer: Karpathy's legacy checkpoint format (`run.c`'s "version 0" .bin) and its
// tokenizer file, converted to a GGUF with llama.cpp's conventions (general.architecture=llama,
// llama.* hyper-parameters, tokenizer.ggml.* vocabulary, token_embd / blk.N.* tensor names).
//
// Checkpoint layout (all little-endian):
//   int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//     (vocab_size < 0 means the classifier is stored separately after the other weights)
//   float32 token_embedding (vocab, dim), rms_att (layer, dim), wq (layer, dim, dim),
//   wk (layer, kv_dim, dim), wv (layer, kv_dim, dim), wo (layer, dim, dim), rms_ffn (layer, dim),
//   w1 (layer, hidden, dim), w2 (layer, dim, hidden), w3 (layer, hidden, dim), rms_final (dim),
//   freq_cis_real, freq_cis_imag (seq_len, head_size/2 each; skipped), [wcls (vocab, dim)]
// Each matrix is row-major (out, in), which is GGUF's ne = [in, out]: tensors copy unchanged.
// llama2.c's RoPE rotates adjacent pairs (2i, 2i+1) of each head, which is llama.cpp's "normal"
// rope for the llama architecture, so Q and K need no row permutation (verified against
// stories260K.gguf, whose every tensor equals the checkpoint's bytes).
//
// Tokenizer layout: int32 max_token_length, then per token: float32 score, int32 length, bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace kvs {

struct llama2c_config {
    int32_t dim = 0;         // embedding width (elements)
    int32_t hidden_dim = 0;  // FFN width (elements)
    int32_t n_layers = 0;
    int32_t n_heads = 0;
    int32_t n_kv_heads = 0;
    int32_t vocab_size = 0;  // always positive here
    int32_t seq_len = 0;     // training context (tokens)
    bool shared_classifier = true;  // false: a separate wcls follows the RoPE tables

    int32_t head_size() const { return dim / n_heads; }
    int32_t kv_dim() const { return head_size() * n_kv_heads; }
    // Bytes the whole checkpoint must have (header included).
    uint64_t expected_file_size() const;
};

// Parses and validates the 28-byte header against the file size: positive dimensions, heads
// dividing dim, n_kv_heads dividing n_heads, an even head size, and a file size equal to what the
// header implies (reports a truncated or oversized file with both numbers).
result<llama2c_config> llama2c_parse_config(const uint8_t* data, size_t size);

struct llama2c_vocab {
    std::vector<std::string> tokens;  // GGUF text: spaces as U+2581, <unk>/<s>/</s> named
    std::vector<float> scores;
    std::vector<int32_t> types;       // llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte
};

// Parses a tokenizer file holding exactly `n_vocab` tokens.
result<llama2c_vocab> llama2c_parse_tokenizer(const uint8_t* data, size_t size, int32_t n_vocab);

struct llama2c_options {
    int64_t context_length = 0;    // llama.context_length; 0: the checkpoint's seq_len
    std::string name = "llama";    // general.name
};

// Converts CHECKPOINT + TOKENIZER into a GGUF at `out` (written atomically). Tensors are F32
// and copied straight from the mapped checkpoint one at a time.
status llama2c_convert(const std::string& checkpoint, const std::string& tokenizer, const std::string& out,
                       const llama2c_options& options = {});

}  // namespace kvs
