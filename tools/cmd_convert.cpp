// kvserve convert: a llama2.c checkpoint (+ its tokenizer file) to a GGUF that kvserve and
// llama.cpp both load. See src/gguf/llama2c.h for the formats.
#include <cstdio>
#include <filesystem>
#include <string>

#include <CLI/CLI.hpp>

#include "command.h"
#include "common.h"
#include "gguf/gguf.h"
#include "gguf/llama2c.h"

namespace kvs::tools {

namespace {

int cmd_convert(int argc, char** argv) {
    CLI::App app("Convert a llama2.c checkpoint and tokenizer to GGUF", "kvserve convert");
    std::string checkpoint, tokenizer, out;
    llama2c_options opt;
    app.add_option("checkpoint", checkpoint, "llama2.c checkpoint (.bin, legacy format)")->required();
    app.add_option("-t,--tokenizer", tokenizer, "llama2.c tokenizer file (tokenizer.bin, tok512.bin)")->required();
    app.add_option("-o,--output", out, "GGUF file to write")->required();
    app.add_option("--context-length", opt.context_length, "llama.context_length to record (default: the checkpoint's seq_len)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 31));
    app.add_option("--name", opt.name, "general.name")->capture_default_str();
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    for (const std::string* p : {&checkpoint, &tokenizer}) {
        std::error_code ec;
        if (!std::filesystem::is_regular_file(*p, ec)) {
            std::fprintf(stderr, "kvserve convert: no such file: %s\n", p->c_str());
            return 2;
        }
    }
    status s = llama2c_convert(checkpoint, tokenizer, out, opt);
    if (!s) {
        std::fprintf(stderr, "kvserve convert: %s\n", s.message().c_str());
        return 1;
    }
    auto f = gguf_file::open(out);
    if (!f) {
        std::fprintf(stderr, "kvserve convert: wrote %s but it does not read back: %s\n", out.c_str(), f.message().c_str());
        return 1;
    }
    uint64_t bytes = 0;
    for (auto& t : f.value()->tensors()) bytes += t.n_bytes;
    std::printf("wrote %s: %zu tensors, %.2f MB of weights, %zu metadata keys\n", out.c_str(), f.value()->tensors().size(),
                double(bytes) / 1e6, f.value()->kvs().size());
    return 0;
}

}  // namespace

KVS_COMMAND("convert", "convert a llama2.c checkpoint + tokenizer to GGUF", cmd_convert);

}  // namespace kvs::tools
