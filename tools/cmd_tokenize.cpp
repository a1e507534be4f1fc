// kvserve tokenize: print the token ids of a text (works on vocabulary-only GGUFs too).
#include <cstdio>
#include <filesystem>

#include "command.h"
#include "common.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace kvs::tools {

namespace {

int cmd_tokenize(int argc, char** argv) {
    CLI::App app("Print the token ids of a text, space-separated on one line", "kvserve tokenize");
    std::string model_path = default_model_path(), prompt;
    bool no_bos = false, parse_special = false, show_pieces = false;
    app.add_option("-m,--model", model_path, "GGUF model or vocabulary file")->capture_default_str();
    app.add_option("-p,--prompt", prompt, "text to tokenize")->required();
    app.add_flag("--no-bos", no_bos, "leave BOS out");
    app.add_flag("--special", parse_special, "parse special tokens such as <|endoftext|> in the text");
    app.add_flag("--pieces", show_pieces, "print id:'piece' pairs instead of bare ids");
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve tokenize: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    auto f = gguf_file::open(model_path);
    if (!f) {
        std::fprintf(stderr, "kvserve tokenize: %s\n", f.message().c_str());
        return 1;
    }
    auto tok = tokenizer::from_gguf(*f.value());
    if (!tok) {
        std::fprintf(stderr, "kvserve tokenize: %s: %s\n", model_path.c_str(), tok.message().c_str());
        return 1;
    }
    auto ids = tok.value()->encode(prompt, !no_bos && tok.value()->add_bos(), parse_special);
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) {
        if (i) line += ' ';
        line += std::to_string(ids[i]);
        if (show_pieces) line += ":'" + tok.value()->token_to_piece(ids[i], true) + "'";
    }
    std::printf("%s\n", line.c_str());
    return 0;
}

}  // namespace

KVS_COMMAND("tokenize", "print the token ids of a text", cmd_tokenize);

}  // namespace kvs::tools
