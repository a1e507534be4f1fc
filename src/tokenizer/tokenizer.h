// Tokenizers built from GGUF metadata, behaving as llama.cpp users expect.
//
//   tokenizer.ggml.model = "llama": SentencePiece-style BPE over UTF-8 characters (spm.cpp):
//     spaces escaped as U+2581, a U+2581 prefix before each text fragment (add_space_prefix),
//     greedy merging of the adjacent pair whose merged piece has the highest score (ties: the
//     leftmost), <0xXX> byte fallback for characters not in the vocabulary.
//   tokenizer.ggml.model = "gpt2": byte-level BPE (bpe.cpp) after the regex pre-tokenizer named
//     by tokenizer.ggml.pre (pretokenize.cpp); merges applied by rank.
//
// Special tokens: control and unknown tokens are cut out of the text before tokenization only
// when `parse_special` is set; user-defined tokens are always cut out (llama.cpp's rule, which
// also matches Hugging Face "added tokens"). Matching takes the longest special token first.
//
// Contract: a tokenizer is immutable after from_gguf(); every const method is safe to call from
// any number of threads at once. It copies what it keeps, so the gguf_file may be closed after
// from_gguf() returns. detok_stream is a small per-sequence object that borrows a tokenizer:
// the tokenizer must outlive it; one detok_stream must not be used from two threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kvs {

class gguf_file;

// tokenizer.ggml.token_type values.
enum class token_type : int32_t {
    undefined = 0,
    normal = 1,
    unknown = 2,
    control = 3,
    user_defined = 4,
    unused = 5,
    byte = 6,
};

enum class tokenizer_kind { spm, bpe };

struct vocab;        // vocab.h: tokens, scores, types, special ids (owned copies)
class token_model;   // the encoder for one text fragment (spm or bpe)

class tokenizer {
public:
    // Reads and validates the vocabulary. Errors name the offending key or token.
    static result<std::unique_ptr<tokenizer>> from_gguf(const gguf_file& file);
    ~tokenizer();

    // Token ids for `text` (any bytes; invalid UTF-8 is encoded through byte tokens). When
    // add_bos is set and the vocabulary has a BOS token, it is prepended. EOS is never
    // appended here (callers that honour add_eos() append eos()).
    std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;

    // The bytes token `id` stands for. Control and unknown tokens give "" unless render_special
    // (then their text, e.g. "<s>"); unused tokens and ids out of range give "".
    std::string token_to_piece(int32_t id, bool render_special = false) const;

    // Concatenation of the pieces. For SentencePiece vocabularies with add_space_prefix, the
    // one space that encode() put in front of the text is removed from the first piece that is
    // not an empty control piece (so decode(encode(x, true, false)) == x, BOS or not, unless x
    // holds a user-defined token: as in llama.cpp, the text fragment after one gets a prefix
    // space of its own, which decode keeps).
    // The result is raw bytes: it is valid UTF-8 whenever the ids came from valid UTF-8.
    std::string decode(std::span<const int32_t> ids, bool render_special = false) const;

    int32_t bos() const;  // -1 when the vocabulary has none
    int32_t eos() const;
    int32_t eot() const;
    int32_t unk() const;
    int32_t pad() const;
    bool is_eog(int32_t id) const;   // end of generation: eos, eot, eom and known end markers
    bool add_bos() const;            // tokenizer.ggml.add_bos_token (default: true for spm)
    bool add_eos() const;
    bool add_space_prefix() const;
    int32_t n_vocab() const;
    tokenizer_kind kind() const;
    const std::string& pre() const;  // pre-tokenizer name ("" for spm)
    token_type type_of(int32_t id) const;  // undefined for ids out of range
    const std::string& text_of(int32_t id) const;  // raw token text ("" out of range)
    // Id of a token by its exact text, or -1.
    int32_t find_token(std::string_view text) const;

private:
    friend class detok_stream;
    tokenizer();
    // Appends the piece of `id` to `out`; while `at_start` (nothing visible emitted yet), the
    // SPM prefix space is stripped. Shared by decode() and detok_stream.
    void append_piece(int32_t id, bool render_special, bool& at_start, std::string& out) const;
    std::unique_ptr<vocab> vocab_;
    std::unique_ptr<token_model> model_;
};

// Incremental detokenizer for streaming generated text. Each push() returns only complete,
// valid UTF-8: a multi-byte character split over several tokens (SPM <0xE2><0x96><0x81> byte
// tokens, BPE byte tokens) is held back until it is complete. Concatenating every push() and
// the final flush() gives exactly tokenizer::decode(ids) when that is valid UTF-8; bytes that
// can never form valid UTF-8 are emitted as U+FFFD.
class detok_stream {
public:
    explicit detok_stream(const tokenizer& tok, bool render_special = false)
        : tok_(&tok), render_special_(render_special) {}
    std::string push(int32_t id);
    // Emits what is still held back (an incomplete trailing character becomes U+FFFD).
    std::string flush();
    // Starts a new sequence (drops held bytes; the next piece is again the first one).
    void reset() {
        pending_.clear();
        at_start_ = true;
    }
    size_t n_pending() const { return pending_.size(); }  // bytes held back

private:
    const tokenizer* tok_;
    bool render_special_;
    bool at_start_ = true;
    std::string pending_;  // bytes not yet emitted (at most one incomplete character)
};

}  // namespace kvs
