// The stories260K model and its tokenizer, loaded once per test process and shared by the
// tests that drive the scheduler or the server. NEED_MODEL skips with a message when the
// fixture is absent.
#pragma once

#include <memory>

#include "model/llama.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace kvs::test {

struct stories_fixture {
    std::unique_ptr<llama_model> model;
    std::unique_ptr<tokenizer> tok;
};

// Null when models/stories260K.gguf is not under shared_dir().
inline const stories_fixture* load_stories() {
    static stories_fixture f;
    static bool tried = false;
    if (!tried) {
        tried = true;
        std::string path = shared_file("models/stories260K.gguf");
        if (path.empty()) return nullptr;
        f.model = std::move(llama_model::load(path).value());
        f.tok = std::move(tokenizer::from_gguf(f.model->file()).value());
    }
    return f.model ? &f : nullptr;
}

}  // namespace kvs::test

#define NEED_MODEL(f)                                              \
    const ::kvs::test::stories_fixture* f = ::kvs::test::load_stories(); \
    if (!f) GTEST_SKIP() << "models/stories260K.gguf not found under " << ::kvs::test::shared_dir()
