#include "tokenizer/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/unicode.h"

namespace kvs {

namespace {

// GPT-2 (OpenAI's encoder.py, Hugging Face ByteLevel with use_regex): common English
// contractions, optional space + letters, optional space + digits, optional space + other
// symbols, whitespace not followed by a non-space (so the last space attaches to the next
// word). Text the pattern leaves unmatched (e.g. a lone "\n" before a letter) is kept as a gap.
constexpr const char* re_gpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";

// Llama 3 / tiktoken cl100k-like: case-insensitive contractions, a letter run with at most one
// leading non-letter non-digit (not a newline), digits in groups of at most 3, symbol runs with
// trailing newlines, newline runs with their leading whitespace, then other whitespace.
constexpr const char* re_llama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Qwen2: the Llama 3 pattern with single digits.
constexpr const char* re_qwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct pre_def {
    std::vector<const char*> names;
    std::vector<const char*> regexes;
    bool ignore_merges;
};

const std::vector<pre_def>& pre_defs() {
    static const std::vector<pre_def> defs = {
        {{"default", "gpt-2", "gpt2", "gpt-neox", "olmo", "mpt", "jais", "phi-2"}, {re_gpt2}, false},
        {{"llama-bpe", "llama3", "llama-v3", "falcon3"}, {re_llama3}, true},
        // Falcon: runs of punctuation (Unicode P plus ASCII symbols) first, then GPT-2, then
        // digit runs cut into groups of three from the left.
        {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", re_gpt2, "[0-9][0-9][0-9]"}, false},
        // StarCoder family: every digit alone, then GPT-2.
        {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone"},
         {R"(\p{N})", re_gpt2},
         false},
        // DeepSeek Coder: newlines alone; optional whitespace + letters; optional whitespace +
        // punctuation; runs of CJK ideographs / U+0800.. / Hangul; every digit alone.
        {{"deepseek-coder"},
         {R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)",
          R"([\x{4E00}-\x{9FA5}\x{0800}-\x{4E00}\x{AC00}-\x{D7FF}]+)", R"(\p{N})"},
         false},
        {{"qwen2"}, {re_qwen2}, false},
    };
    return defs;
}

}  // namespace

struct pretokenizer_regex {
    pcre2_code* code = nullptr;
    ~pretokenizer_regex() { pcre2_code_free(code); }
};

std::vector<std::string> pretokenizer_names() {
    std::vector<std::string> names;
    for (const pre_def& d : pre_defs())
        for (const char* n : d.names) names.emplace_back(n);
    return names;
}

pretokenizer::~pretokenizer() = default;

result<std::unique_ptr<pretokenizer>> pretokenizer::create(std::string_view name) {
    for (const pre_def& d : pre_defs()) {
        bool hit = false;
        for (const char* n : d.names) hit = hit || name == n;
        if (!hit) continue;
        std::unique_ptr<pretokenizer> p(new pretokenizer());
        p->name_ = std::string(name);
        p->ignore_merges_ = d.ignore_merges;
        for (const char* pattern : d.regexes) {
            int err = 0;
            PCRE2_SIZE err_off = 0;
            pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                             PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
            if (!code) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(err, msg, sizeof(msg));
                return status::error(strfmt("pre-tokenizer '%s': regex error at offset %zu: %s",
                                            p->name_.c_str(), size_t(err_off),
                                            reinterpret_cast<const char*>(msg)));
            }
            pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional: interpreter if it fails
            auto r = std::make_unique<pretokenizer_regex>();
            r->code = code;
            p->regexes_.push_back(std::move(r));
        }
        return p;
    }
    std::string known;
    for (const std::string& n : pretokenizer_names()) known += (known.empty() ? "" : ", ") + n;
    return status::error(strfmt("tokenizer.ggml.pre '%.*s' is not a known pre-tokenizer (known: %s)",
                                int(name.size()), name.data(), known.c_str()));
}

namespace {

// Splits one valid-UTF-8 span into matches of `code` and the gaps between them.
void split_one(pcre2_code* code, pcre2_match_data* md, std::string_view text, text_span span,
               std::vector<text_span>& out) {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + span.offset);
    const size_t len = span.length;
    size_t pos = 0, gap_start = 0;
    while (pos < len) {
        int rc = pcre2_match(code, subject, len, pos, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)  // JIT stack exhausted: retry interpreted
            rc = pcre2_match(code, subject, len, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
        if (rc < 0) break;  // no further match (or a resource limit): the rest is one gap
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        size_t b = ov[0], e = ov[1];
        if (e <= b) {  // empty match (not produced by the built-in patterns): step one character
            pos = b + utf8::char_len(std::string_view(text.data() + span.offset, len), b);
            continue;
        }
        if (b > gap_start) out.push_back({span.offset + gap_start, b - gap_start});
        out.push_back({span.offset + b, e - b});
        pos = gap_start = e;
    }
    if (gap_start < len) out.push_back({span.offset + gap_start, len - gap_start});
}

}  // namespace

void pretokenizer::split(std::string_view text, std::vector<text_span>& out) const {
    // Pieces so far; `opaque` marks single invalid bytes that no regex may see.
    std::vector<text_span> cur, next;
    std::vector<bool> opaque, next_opaque;
    size_t run = 0;
    for (size_t i = 0; i < text.size();) {
        const int r = utf8::check(text, i);
        if (r > 0) {
            i += size_t(r);
            continue;
        }
        if (i > run) {
            cur.push_back({run, i - run});
            opaque.push_back(false);
        }
        cur.push_back({i, 1});
        opaque.push_back(true);
        run = ++i;
    }
    if (text.size() > run) {
        cur.push_back({run, text.size() - run});
        opaque.push_back(false);
    }

    for (const auto& re : regexes_) {
        pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code, nullptr);
        next.clear();
        next_opaque.clear();
        for (size_t k = 0; k < cur.size(); ++k) {
            if (opaque[k]) {
                next.push_back(cur[k]);
                next_opaque.push_back(true);
                continue;
            }
            split_one(re->code, md, text, cur[k], next);
            next_opaque.resize(next.size(), false);
        }
        pcre2_match_data_free(md);
        cur.swap(next);
        opaque.swap(next_opaque);
    }
    out.insert(out.end(), cur.begin(), cur.end());
}

}  // namespace kvs
