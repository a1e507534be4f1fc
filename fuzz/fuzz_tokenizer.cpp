// libFuzzer target for the tokenizers: arbitrary bytes through encode / decode / the streaming
// detokenizer of every shipped vocabulary (shared/vocab/*.gguf and shared/models/*.gguf, loaded
// once). Input: byte 0 picks the vocabulary and the flags (add_bos, parse_special), the rest is
// the text. Checked on every input:
//   - every id is in [0, n_vocab), and decode / token_to_piece never fail;
//   - decode(encode(x)) == x where the vocabulary guarantees it: parse_special off, every byte
//     of x one the vocabulary can spell alone (found at start-up by round-tripping each of the
//     256 single bytes; byte-fallback SentencePiece and byte-level BPE spell all or nearly all),
//     and for SentencePiece no literal U+2581 (its escape for a space) and, with a prefix space,
//     no user-defined token (the fragment after one gets a prefix space of its own);
//   - the streaming detokenizer's pushes plus flush equal decode() whenever that is valid UTF-8,
//     and are always valid UTF-8.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/utf8.h"
#include "fuzz_shared.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace {

struct loaded_vocab {
    std::string name;
    std::unique_ptr<kvs::tokenizer> tok;
    bool spellable[256] = {};  // byte b round-trips alone
};

std::vector<loaded_vocab>& vocabs() {
    static std::vector<loaded_vocab> v;
    return v;
}

void load_all() {
    namespace fs = std::filesystem;
    const std::string shared = kvs::fuzz::shared_dir();
    std::vector<std::string> paths;
    for (const char* sub : {"/vocab", "/models"}) {
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(shared + sub, ec))
            if (e.path().extension() == ".gguf") paths.push_back(e.path().string());
    }
    std::sort(paths.begin(), paths.end());
    for (const std::string& p : paths) {
        auto f = kvs::gguf_file::open(p);
        if (!f) continue;
        auto t = kvs::tokenizer::from_gguf(*f.value());
        if (!t) continue;
        loaded_vocab lv;
        lv.name = fs::path(p).filename().string();
        lv.tok = std::move(t.value());
        for (int b = 0; b < 256; ++b) {
            const std::string one(1, char(b));
            lv.spellable[b] = lv.tok->decode(lv.tok->encode(one, false, false)) == one;
        }
        vocabs().push_back(std::move(lv));
    }
    std::fprintf(stderr, "fuzz_tokenizer: %zu vocabularies from %s\n", vocabs().size(), shared.c_str());
    if (vocabs().empty()) std::fprintf(stderr, "fuzz_tokenizer: no vocabulary found; set KVSERVE_SHARED\n");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    load_all();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1 || vocabs().empty()) return 0;
    const uint8_t sel = data[0];
    const loaded_vocab& v = vocabs()[(sel >> 2) % vocabs().size()];
    const bool add_bos = sel & 1, parse_special = sel & 2;
    const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
    const kvs::tokenizer& tok = *v.tok;

    const std::vector<int32_t> ids = tok.encode(text, add_bos, parse_special);
    for (int32_t id : ids) {
        if (id < 0 || id >= tok.n_vocab()) __builtin_trap();
        (void)tok.token_to_piece(id, true);
    }
    const std::string back = tok.decode(ids);

    bool guaranteed = !parse_special;
    for (char c : text) guaranteed = guaranteed && v.spellable[static_cast<unsigned char>(c)];
    if (tok.kind() == kvs::tokenizer_kind::spm) {
        if (text.find("\xe2\x96\x81") != std::string_view::npos) guaranteed = false;
        // As in llama.cpp, the text after a user-defined token (always cut out) is a fragment of
        // its own and gets its own prefix space, which decode does not remove.
        if (tok.add_space_prefix())
            for (int32_t id : ids) guaranteed = guaranteed && tok.type_of(id) != kvs::token_type::user_defined;
    }
    if (guaranteed && back != text) {
        std::fprintf(stderr, "fuzz_tokenizer: %s: decode(encode(x)) != x (%zu bytes in, %zu out)\n", v.name.c_str(), text.size(),
                     back.size());
        __builtin_trap();
    }

    kvs::detok_stream stream(tok);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.push(id);
    streamed += stream.flush();
    if (!kvs::utf8_is_valid(streamed)) __builtin_trap();
    if (kvs::utf8_is_valid(back) && streamed != back) {
        std::fprintf(stderr, "fuzz_tokenizer: %s: streamed text differs from decode()\n", v.name.c_str());
        __builtin_trap();
    }
    return 0;
}
