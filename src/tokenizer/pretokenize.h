// Regex pre-tokenizers of byte-level BPE vocabularies, selected by tokenizer.ggml.pre.
//
// A pre-tokenizer is a list of regexes applied in sequence: each one splits every current
// piece into its matches and the gaps between them (gaps are kept as pieces), so pieces never
// cross a boundary made by an earlier regex. This is how Hugging Face `Split(..., Isolated)`
// sequences and llama.cpp's regex lists behave. Regexes run with PCRE2 in UTF + UCP mode
// (\s, \p{L}, \p{N}, \p{P} are Unicode-aware); they only ever see valid UTF-8: every byte that
// is not part of a valid character becomes a piece of its own and is never matched.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace kvs {

struct pretokenizer_regex;  // one compiled PCRE2 pattern

struct text_span {
    size_t offset;  // bytes
    size_t length;  // bytes
};

class pretokenizer {
public:
    // Known names: default, gpt-2, gpt2, gpt-neox, olmo, mpt, jais, phi-2 (GPT-2 regex);
    // llama-bpe, llama3, llama-v3, falcon3 (Llama 3 regex; whole words found in the vocabulary
    // skip merging); falcon; starcoder, refact, command-r, smollm, codeshell, exaone;
    // deepseek-coder; qwen2. Anything else is an error naming the supported set.
    static result<std::unique_ptr<pretokenizer>> create(std::string_view name);
    ~pretokenizer();

    // Appends the pieces of `text` (spans relative to text) in order; they tile the text.
    void split(std::string_view text, std::vector<text_span>& out) const;
    // Llama 3 style: a piece that is itself a vocabulary token is emitted without merging.
    bool ignore_merges() const { return ignore_merges_; }
    const std::string& name() const { return name_; }

private:
    pretokenizer() = default;
    std::string name_;
    bool ignore_merges_ = false;
    std::vector<std::unique_ptr<pretokenizer_regex>> regexes_;
};

// Names accepted by pretokenizer::create, for messages and tests.
std::vector<std::string> pretokenizer_names();

}  // namespace kvs
