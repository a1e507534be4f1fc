// End-to-end generation on the real stories260K model: tokenizer + forward + greedy sampling
// reproduce the model's known continuation token for token.
#include <gtest/gtest.h>

#include "model/llama.h"
#include "model/session.h"
#include "sampling/sampler.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace kvs;

namespace {

const char* k_prompt = "Once upon a time";
const char* k_continuation =
    ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red "
    "ball. She wanted to play with it, but it was too high.";

std::string greedy_continuation(const llama_model& m, const tokenizer& tk, int threads, int64_t n_batch, size_t n_chars) {
    thread_pool pool(threads);
    session_params sp;
    sp.n_ctx = 256;
    sp.n_batch = n_batch;
    auto s = session::create(m, pool, sp).value();
    auto prompt = tk.encode(k_prompt, true, false);
    EXPECT_TRUE(s->prefill(prompt));
    sampling_params p;
    p.temperature = 0;
    p.n_vocab = m.hparams().n_vocab;
    sampler smp(p);
    std::vector<int32_t> out;
    std::string text;
    while (text.size() < n_chars && s->n_past() < s->n_ctx()) {
        int32_t t = smp.sample(s->logits(), p.n_vocab);
        if (tk.is_eog(t)) break;
        out.push_back(t);
        std::vector<int32_t> all = prompt;
        all.insert(all.end(), out.begin(), out.end());
        text = tk.decode(all).substr(std::string(k_prompt).size());
        EXPECT_TRUE(s->decode(t));
    }
    return text;
}

}  // namespace

TEST(Generate, Stories260kGreedyReproducesKnownContinuation) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m) << m.message();
    auto tk = tokenizer::from_gguf(m.value()->file());
    ASSERT_TRUE(tk) << tk.message();
    const std::string want = k_continuation;
    for (int threads : {1, 2})
        for (int64_t n_batch : {512, 2}) {
            std::string got = greedy_continuation(*m.value(), *tk.value(), threads, n_batch, want.size());
            EXPECT_EQ(got.substr(0, want.size()), want) << "threads " << threads << " batch " << n_batch;
        }
}

TEST(Generate, PromptLongerThanContextIsAnErrorNotACrash) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path).value();
    thread_pool pool(1);
    session_params sp;
    sp.n_ctx = 8;
    auto s = session::create(*m, pool, sp).value();
    std::vector<int32_t> prompt(9, 1);
    auto st = s->prefill(prompt);
    ASSERT_FALSE(st);
    EXPECT_NE(st.message().find("context length 8"), std::string::npos) << st.message();
    EXPECT_EQ(s->n_past(), 0);
    EXPECT_TRUE(s->kv().check_integrity());
    // The session is still usable.
    EXPECT_TRUE(s->prefill({1, 2, 3}));
    EXPECT_EQ(s->n_past(), 3);
}
