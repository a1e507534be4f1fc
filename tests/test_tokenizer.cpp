// Tokenizer tests: round trips on varied text for every shared vocabulary, token ids compared
// with an independent reference (tests/tokenizer_ref.py: Google's sentencepiece for SPM, a
// Python BPE written from GPT-2's encoder.py), hand-checked ids, special tokens, the streaming
// detokenizer, pre-tokenizers, and malformed metadata.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "gguf/gguf.h"
#include "test_util.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace kvs {
namespace {

// ---------------------------------------------------------------------------------------------
// Corpus

std::vector<std::string> hand_cases() {
    return {
        "",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n\n",
        " \n ",
        "Hello world",
        " Hello world",
        "Hello  world",
        "hello   \n\n  world  ",
        "   leading and trailing   ",
        "Tab\tseparated\tvalues\n\tindented",
        "Windows\r\nline\r\nendings\r\n",
        "3.14159 2024 1234567890 12,345.67 1e-10 0x1F",
        "007 00000 9999999 1 22 333 4444 55555",
        "I'm can't won't they've we'll she'd it's DON'T I'LL You'Re",
        "int main() {\n    printf(\"hi %d\\n\", x);\n    return 0;\n}\n",
        "def f(x):\n\treturn x**2  # square\n\n\nclass A(B): pass",
        "for (auto& [k, v] : map) { ++k; v->x = k << 2; }",
        "<div class=\"a\">&amp;</div>",
        "SELECT * FROM t WHERE a >= 10 AND b != 'x';",
        "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf\xe4\xb8\x96\xe7\x95\x8c",  // こんにちは世界
        "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xef\xbc\x81",            // 你好，世界！
        "\xec\x95\x88\xeb\x85\x95\xed\x95\x98\xec\x84\xb8\xec\x9a\x94",                        // 안녕하세요
        "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, \xd0\xbc\xd0\xb8\xd1\x80!",         // Привет, мир!
        "\xce\x93\xce\xb5\xce\xb9\xce\xac \xcf\x83\xce\xbf\xcf\x85 \xce\x9a\xcf\x8c\xcf\x83\xce\xbc\xce\xb5",
        "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xd8\xa8\xd8\xa7\xd9\x84\xd8\xb9\xd8\xa7\xd9\x84\xd9\x85",  // Arabic
        "\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d \xd7\xa2\xd7\x95\xd7\x9c\xd7\x9d",                  // Hebrew
        "\xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d\xe0\xa4\xa4\xe0\xa5\x87",            // नमस्ते
        "\xe0\xb8\xaa\xe0\xb8\xa7\xe0\xb8\xb1\xe0\xb8\xaa\xe0\xb8\x94\xe0\xb8\xb5",            // Thai
        "\xf0\x9f\xa6\x99\xf0\x9f\x9a\x80 \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd "
        "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7",           // emoji, ZWJ
        "\xf0\x9f\x87\xba\xf0\x9f\x87\xb8\xf0\x9f\x87\xaf\xf0\x9f\x87\xb5 flags",
        "e\xcc\x81 a\xcc\x80 n\xcc\x83 Z\xcc\xa4\xcd\x94\xcd\xa7\xcc\x91" "a\xcc\x88",           // combining
        "caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 \xc3\x85ngstr\xc3\xb6m",
        "\xef\xbd\x86\xef\xbd\x95\xef\xbd\x8c\xef\xbd\x8c width",                               // ｆｕｌｌ
        "\xe2\x88\x80x\xe2\x88\x88\xe2\x84\x9d: x\xc2\xb2\xe2\x89\xa5" "0 \xe2\x88\x91\xe2\x88\xab\xe2\x88\x9a\xe2\x88\x9e",
        "Hello\xe4\xb8\x96\xe7\x95\x8c" "123abc!!!",
        "a\xe2\x80\x8b" "b\xe2\x80\x8d" "c a\xc2\xa0" "b \xe3\x80\x80 x",                       // ZW, NBSP, ideographic space
        "multiple!!! punctuation??? ... --- ___ *** ;;",
        "$100 + 50% = <price> ^ ~ | `tick` @user #tag",
        "'s 's 'S 'll''ve",
        std::string(40, ' ') + "x" + std::string(17, ' '),
        std::string(64, 'a'),
        "\xe4\xb8\x80\xe4\xb8\x80\xe4\xb8\x80\xe4\xb8\x80\xe4\xb8\x80\xe4\xb8\x80" "12345678",
        "x\n\n\n\n  \t  y",
        " = Robert Boulter = \n\n Robert Boulter is an English film , television and theatre actor .",
    };
}

std::vector<std::string> file_lines(const std::string& rel, size_t max_lines, size_t skip_every) {
    std::vector<std::string> out;
    std::string path = test::shared_file(rel);
    if (path.empty()) return out;
    std::ifstream f(path);
    std::string line;
    size_t k = 0;
    while (out.size() < max_lines && std::getline(f, line)) {
        if (line.empty() || (k++ % skip_every) != 0) continue;
        out.push_back(line);
    }
    return out;
}

std::vector<std::string> corpus() {
    std::vector<std::string> c = hand_cases();
    for (auto& l : file_lines("text/wikitext-2-test.txt", 150, 7)) c.push_back(l);
    for (auto& l : file_lines("text/tinystories-valid.txt", 80, 11)) c.push_back(l);
    // A multi-line chunk with its newlines.
    auto para = file_lines("text/tinystories-valid.txt", 8, 1);
    std::string joined;
    for (auto& l : para) joined += l + "\n";
    c.push_back(joined);
    return c;
}

std::string read_file_text(const std::string& path, size_t max_bytes) {
    std::ifstream f(path, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (s.size() > max_bytes) s.resize(max_bytes);
    return s;
}

std::string hex(std::string_view s) {
    static const char* d = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) {
        out += d[c >> 4];
        out += d[c & 15];
    }
    return out;
}

std::string ids_str(const std::vector<int32_t>& ids) {
    std::string s;
    for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
    return s;
}

std::string printable(std::string_view s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '\r') out += "\\r";
        else out += char(c);
    }
    return out.size() > 160 ? out.substr(0, 160) + "..." : out;
}

// ---------------------------------------------------------------------------------------------
// Loading

struct loaded {
    std::unique_ptr<gguf_file> file;
    std::unique_ptr<tokenizer> tok;
};

loaded load_tokenizer(const std::string& path) {
    loaded l;
    auto f = gguf_file::open(path);
    EXPECT_TRUE(f.is_ok()) << f.message();
    if (!f) return l;
    l.file = std::move(f.value());
    auto t = tokenizer::from_gguf(*l.file);
    EXPECT_TRUE(t.is_ok()) << t.message();
    if (t) l.tok = std::move(t.value());
    return l;
}

struct vocab_case {
    const char* name;
    const char* rel;
};

const vocab_case all_vocabs[] = {
    {"stories260K", "models/stories260K.gguf"},
    {"llama_spm", "vocab/ggml-vocab-llama-spm.gguf"},
    {"phi3", "vocab/ggml-vocab-phi-3.gguf"},
    {"gpt2", "vocab/ggml-vocab-gpt-2.gguf"},
    {"falcon", "vocab/ggml-vocab-falcon.gguf"},
    {"starcoder", "vocab/ggml-vocab-starcoder.gguf"},
    {"gpt_neox", "vocab/ggml-vocab-gpt-neox.gguf"},
    {"deepseek_coder", "vocab/ggml-vocab-deepseek-coder.gguf"},
};

#define KVS_LOAD_TOK(var, rel)              \
    KVS_SKIP_IF_MISSING(var##_path, rel);   \
    loaded var = load_tokenizer(var##_path); \
    ASSERT_TRUE(var.tok)

// ---------------------------------------------------------------------------------------------
// The Python reference

bool python_available(std::string* why) {
    std::string out;
    if (test::run_command("test -x /usr/bin/python3", &out) != 0) {
        *why = "/usr/bin/python3 not found";
        return false;
    }
    if (test::run_command("/usr/bin/python3 -c 'import regex, sentencepiece'", &out) != 0) {
        *why = "python modules regex/sentencepiece missing (Debian: python3-regex python3-sentencepiece): " + out;
        return false;
    }
    return true;
}

std::string ref_script() { return std::string(KVSERVE_SOURCE_DIR) + "/tests/tokenizer_ref.py"; }

struct ref_case {
    std::string text;
    bool add_bos;
    bool parse_special;
};

// Runs the reference on `cases`; returns one id list per case, or an error message.
result<std::vector<std::vector<int32_t>>> run_reference(const std::string& gguf_path,
                                                         const std::vector<ref_case>& cases,
                                                         const std::string& tag) {
    const std::string in = test::temp_dir() + "/ref_in_" + tag + ".txt";
    const std::string outp = test::temp_dir() + "/ref_out_" + tag + ".txt";
    {
        std::ofstream f(in);
        for (const auto& c : cases) f << (c.add_bos ? 1 : 0) << ' ' << (c.parse_special ? 1 : 0) << ' ' << hex(c.text) << '\n';
    }
    std::string log;
    const int rc = test::run_command("/usr/bin/python3 '" + ref_script() + "' '" + gguf_path + "' '" + in + "' '" + outp + "'", &log);
    if (rc != 0) return status::error(strfmt("reference exited with %d: %s", rc, log.c_str()));
    std::ifstream f(outp);
    std::vector<std::vector<int32_t>> res;
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream ss(line);
        std::vector<int32_t> ids;
        int32_t id;
        while (ss >> id) ids.push_back(id);
        res.push_back(std::move(ids));
    }
    if (res.size() != cases.size())
        return status::error(strfmt("reference returned %zu lines for %zu cases", res.size(), cases.size()));
    return res;
}

// Compares encode() with the reference on cases; reports up to 5 mismatches.
void expect_matches_reference(const tokenizer& tok, const std::string& gguf_path,
                              const std::vector<ref_case>& cases, const std::string& tag) {
    auto ref = run_reference(gguf_path, cases, tag);
    ASSERT_TRUE(ref.is_ok()) << ref.message();
    int n_bad = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        const auto ids = tok.encode(cases[i].text, cases[i].add_bos, cases[i].parse_special);
        if (ids == ref.value()[i]) continue;
        if (++n_bad <= 5)
            ADD_FAILURE() << tag << ": case " << i << " \"" << printable(cases[i].text) << "\" (bos "
                          << cases[i].add_bos << ", special " << cases[i].parse_special << ")\n  ours: "
                          << ids_str(ids) << "\n  ref:  " << ids_str(ref.value()[i]);
    }
    EXPECT_EQ(n_bad, 0) << n_bad << " of " << cases.size() << " cases differ from the reference";
}

// ---------------------------------------------------------------------------------------------
// Per-vocabulary tests

class tok_vocab : public ::testing::TestWithParam<vocab_case> {};

TEST_P(tok_vocab, RoundTripsVariedText) {
    KVS_LOAD_TOK(l, GetParam().rel);
    auto cases = corpus();
    // Invalid UTF-8 goes through byte tokens and comes back unchanged too. (Bytes C0, C1 and
    // F5..FF never occur in UTF-8, and several BPE vocabularies have no token for them.)
    cases.push_back("bad \xe4\xb8 bytes \xc3 and truncated \xe2\x96");
    cases.push_back("\x80");
    cases.push_back("\xed\xa0\x80 surrogate, overlong \xe0\x80\xaf");
    for (bool bos : {false, true}) {
        for (const auto& text : cases) {
            const auto ids = l.tok->encode(text, bos, false);
            EXPECT_EQ(l.tok->decode(ids), text) << "ids " << ids_str(ids);
            for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < l.tok->n_vocab());
        }
    }
    // Bytes that no UTF-8 text contains: valid ids, no crash (round trip where representable).
    const std::string never = "x\xff\xfe\xc0\xc1\xf5y";
    for (int32_t id : l.tok->encode(never, true, true)) ASSERT_TRUE(id >= 0 && id < l.tok->n_vocab());
}

TEST_P(tok_vocab, MatchesIndependentReference) {
    KVS_LOAD_TOK(l, GetParam().rel);
    std::string why;
    if (!python_available(&why)) GTEST_SKIP() << "independent reference unavailable: " << why;
    std::vector<ref_case> cases;
    for (const auto& t : corpus()) cases.push_back({t, l.tok->add_bos(), false});
    // Special tokens inside text, parsed and not parsed.
    std::vector<std::string> specials;
    for (int32_t id : {l.tok->bos(), l.tok->eos(), l.tok->eot()})
        if (id >= 0 && !l.tok->text_of(id).empty()) specials.push_back(l.tok->text_of(id));
    for (const auto& s : specials) {
        for (bool ps : {false, true}) {
            cases.push_back({s + "Hello" + s + " world" + s, true, ps});
            cases.push_back({"a " + s + "\n" + s + s + " b", false, ps});
        }
    }
    expect_matches_reference(*l.tok, l_path, cases, GetParam().name);
}

TEST_P(tok_vocab, StreamingDetokenizerEmitsValidUtf8AndEqualsDecode) {
    KVS_LOAD_TOK(l, GetParam().rel);
    for (const auto& text : corpus()) {
        const auto ids = l.tok->encode(text, l.tok->add_bos(), false);
        detok_stream ds(*l.tok);
        std::string streamed;
        for (int32_t id : ids) {
            const std::string chunk = ds.push(id);
            ASSERT_TRUE(utf8::is_valid(chunk)) << "invalid UTF-8 chunk for " << printable(text);
            streamed += chunk;
        }
        streamed += ds.flush();
        EXPECT_EQ(streamed, l.tok->decode(ids));
        EXPECT_EQ(streamed, text);
    }
}

TEST_P(tok_vocab, SpecialTokensParseOnlyWhenAsked) {
    KVS_LOAD_TOK(l, GetParam().rel);
    const tokenizer& t = *l.tok;
    int n_checked = 0;
    for (int32_t id = 0; id < t.n_vocab(); ++id) {
        const token_type ty = t.type_of(id);
        if (ty != token_type::control || t.text_of(id).empty()) continue;
        const std::string& s = t.text_of(id);
        const auto parsed = t.encode(s, false, true);
        ASSERT_EQ(parsed, std::vector<int32_t>{id}) << "control token " << id << " '" << s << "'";
        const auto plain = t.encode(s, false, false);
        EXPECT_NE(plain, std::vector<int32_t>{id}) << "control token " << id << " parsed without parse_special";
        EXPECT_EQ(t.decode(parsed), "");
        EXPECT_EQ(t.decode(parsed, /*render_special=*/true), s);
        ++n_checked;
    }
    EXPECT_GT(n_checked, 0);
    if (t.eos() >= 0) {
        EXPECT_TRUE(t.is_eog(t.eos()));
    }
}

TEST_P(tok_vocab, EncodesAMegabyteQuickly) {
    KVS_LOAD_TOK(l, GetParam().rel);
    KVS_SKIP_IF_MISSING(text_path, "text/wikitext-2-test.txt");
    const std::string text = read_file_text(text_path, 1 << 20);
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = l.tok->encode(text, false, false);
    const auto t1 = std::chrono::steady_clock::now();
    const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    // Timing is reported, not asserted (shared, noisy machines).
    std::printf("[ perf     ] %s: encoded %zu bytes into %zu tokens in %.1f ms (%.2f MB/s)\n",
                GetParam().name, text.size(), ids.size(), ms, text.size() / 1e3 / std::max(ms, 1e-3));
    EXPECT_EQ(l.tok->decode(ids), text);
}

TEST_P(tok_vocab, LongRunsRoundTrip) {
    KVS_LOAD_TOK(l, GetParam().rel);
    const size_t n = 1 << 17;
    std::string cjk, mixed;
    while (cjk.size() < n) cjk += "\xe4\xb8\x80\xe7\x95\x8c";
    while (mixed.size() < n) mixed += " \t\n!?";
    const std::vector<std::string> runs = {std::string(n, ' ') + "x", std::string(n, 'a'), std::string(n, '7'),
                                           std::string(n, '\n') + "x", cjk, mixed};
    for (const auto& text : runs) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto ids = l.tok->encode(text, false, false);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        EXPECT_EQ(l.tok->decode(ids), text) << "run starting with " << printable(text.substr(0, 8));
        if (ms > 100)
            std::printf("[ perf     ] %s: %zu-byte run of \"%s\" took %.1f ms\n", GetParam().name, text.size(),
                        printable(text.substr(0, 6)).c_str(), ms);
    }
}

TEST_P(tok_vocab, ConcurrentEncodeIsDeterministic) {
    KVS_LOAD_TOK(l, GetParam().rel);
    const auto cases = corpus();
    std::vector<std::vector<int32_t>> expect;
    for (const auto& t : cases) expect.push_back(l.tok->encode(t, true, true));
    std::vector<int> n_bad(4, 0);
    std::vector<std::thread> threads;
    for (int k = 0; k < 4; ++k)
        threads.emplace_back([&, k] {
            for (size_t i = 0; i < cases.size(); ++i)
                n_bad[size_t(k)] += l.tok->encode(cases[i], true, true) != expect[i];
        });
    for (auto& th : threads) th.join();
    for (int k = 0; k < 4; ++k) EXPECT_EQ(n_bad[size_t(k)], 0) << "thread " << k;
}

TEST_P(tok_vocab, RandomBytesRoundTrip) {
    KVS_LOAD_TOK(l, GetParam().rel);
    // Bytes biased towards ASCII, spaces, special-token punctuation and UTF-8 lead/continuation
    // bytes; C0, C1 and F5..FF are left out (some BPE vocabularies cannot spell them).
    const std::string alphabet = std::string("ab <|>/s\n\t 09'") + "\xc3\xa9\xe2\x96\x81\xe4\xb8\x80\xf0\x9f\xa6\x99\x80\xbf";
    uint64_t state = 0x9E3779B97F4A7C15ull;
    auto next = [&] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return state;
    };
    int n_checked = 0;
    for (int i = 0; i < 400; ++i) {
        std::string text;
        const size_t len = next() % 48;
        for (size_t k = 0; k < len; ++k) text += alphabet[next() % alphabet.size()];
        for (bool ps : {false, true}) {
            const auto ids = l.tok->encode(text, true, ps);
            for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < l.tok->n_vocab());
            // SPM cannot round-trip a literal U+2581 (it is its escape for a space).
            if (ps || text.find("\xe2\x96\x81") != std::string::npos) continue;
            EXPECT_EQ(l.tok->decode(ids), text) << "ids " << ids_str(ids);
            ++n_checked;
        }
    }
    EXPECT_GT(n_checked, 200);
}

INSTANTIATE_TEST_SUITE_P(all, tok_vocab, ::testing::ValuesIn(all_vocabs),
                         [](const ::testing::TestParamInfo<vocab_case>& i) { return std::string(i.param.name); });

// ---------------------------------------------------------------------------------------------
// Hand-checked ids

TEST(tokenizer, Stories260KOnceUponATime) {
    KVS_LOAD_TOK(l, "models/stories260K.gguf");
    const tokenizer& t = *l.tok;
    EXPECT_EQ(t.kind(), tokenizer_kind::spm);
    EXPECT_EQ(t.n_vocab(), 512);
    EXPECT_EQ(t.bos(), 1);
    EXPECT_EQ(t.eos(), 2);
    EXPECT_TRUE(t.add_bos());
    // "▁Once" "▁upon" "▁a" "▁time"
    const auto ids = t.encode("Once upon a time", true, false);
    EXPECT_EQ(ids, (std::vector<int32_t>{1, 403, 407, 261, 378}));
    EXPECT_EQ(t.text_of(403), "\xe2\x96\x81Once");
    EXPECT_EQ(t.token_to_piece(403), " Once");
    EXPECT_EQ(t.decode(ids), "Once upon a time");
    EXPECT_EQ(t.decode(ids, true), "<s> Once upon a time");
    EXPECT_EQ(t.encode("", true, false), std::vector<int32_t>{1});
    EXPECT_EQ(t.encode("", false, false), std::vector<int32_t>{});
    EXPECT_TRUE(t.is_eog(2));
    EXPECT_FALSE(t.is_eog(1));
}

TEST(tokenizer, Llama2KnownIds) {
    KVS_LOAD_TOK(l, "vocab/ggml-vocab-llama-spm.gguf");
    const tokenizer& t = *l.tok;
    // Well-known Llama 2 ids: "▁Hello" 15043, "▁world" 3186.
    EXPECT_EQ(t.encode("Hello world", true, false), (std::vector<int32_t>{1, 15043, 3186}));
    EXPECT_EQ(t.encode(" Hello world", false, false), (std::vector<int32_t>{29871, 15043, 3186}));
    // Byte fallback: U+1F999 (🦙) is not a piece: four <0xXX> tokens (<0x00> is id 3).
    const auto llama = t.encode("\xf0\x9f\xa6\x99", false, false);
    ASSERT_EQ(llama.size(), 5u);  // "▁" + 4 bytes
    EXPECT_EQ(llama[1], 3 + 0xF0);
    EXPECT_EQ(llama[4], 3 + 0x99);
    EXPECT_EQ(t.type_of(llama[1]), token_type::byte);
    // parse_special: "<s>" in text becomes BOS only when asked.
    EXPECT_EQ(t.encode("<s>", false, true), std::vector<int32_t>{1});
}

TEST(tokenizer, Gpt2KnownIds) {
    KVS_LOAD_TOK(l, "vocab/ggml-vocab-gpt-2.gguf");
    const tokenizer& t = *l.tok;
    EXPECT_EQ(t.kind(), tokenizer_kind::bpe);
    EXPECT_EQ(t.pre(), "gpt-2");
    EXPECT_FALSE(t.add_bos());
    // Well-known GPT-2 ids: "Hello" 15496, "Ġworld" 995, "<|endoftext|>" 50256.
    EXPECT_EQ(t.encode("Hello world", false, false), (std::vector<int32_t>{15496, 995}));
    EXPECT_EQ(t.encode("<|endoftext|>", false, true), std::vector<int32_t>{50256});
    EXPECT_GT(t.encode("<|endoftext|>", false, false).size(), 1u);
    EXPECT_TRUE(t.is_eog(50256));
    EXPECT_EQ(t.eot(), 50256);
    EXPECT_EQ(t.token_to_piece(995), " world");
}

TEST(tokenizer, Phi3EndOfTurn) {
    KVS_LOAD_TOK(l, "vocab/ggml-vocab-phi-3.gguf");
    const tokenizer& t = *l.tok;
    const int32_t end = t.find_token("<|end|>");
    ASSERT_GE(end, 0);
    EXPECT_EQ(t.eot(), end);
    EXPECT_TRUE(t.is_eog(end));
    EXPECT_TRUE(t.is_eog(t.eos()));
    EXPECT_FALSE(t.is_eog(t.find_token("<|user|>")));
    // User-defined tokens are cut out even without parse_special (llama.cpp's rule).
    const int32_t eos_text = t.find_token("</s>");
    ASSERT_GE(eos_text, 0);
    EXPECT_EQ(t.type_of(eos_text), token_type::user_defined);
    const auto ids = t.encode("a</s>b", false, false);
    EXPECT_NE(std::find(ids.begin(), ids.end(), eos_text), ids.end()) << ids_str(ids);
}

// ---------------------------------------------------------------------------------------------
// Streaming detokenizer details

TEST(detok_stream, HoldsPartialMultiByteCharacters) {
    KVS_LOAD_TOK(l, "models/stories260K.gguf");
    const tokenizer& t = *l.tok;
    // 世 (E4 B8 96) is not in this 512-token vocabulary: it is spelled with byte tokens.
    const auto ids = t.encode("\xe4\xb8\x96!", false, false);
    std::vector<int32_t> bytes;
    for (int32_t id : ids)
        if (t.type_of(id) == token_type::byte) bytes.push_back(id);
    ASSERT_EQ(bytes.size(), 3u) << ids_str(ids);
    detok_stream ds(t);
    std::string all;
    for (int32_t id : ids) {
        std::string chunk = ds.push(id);
        if (id == bytes[0] || id == bytes[1]) {
            EXPECT_EQ(chunk, "");
            EXPECT_GT(ds.n_pending(), 0u);
        }
        all += chunk;
    }
    all += ds.flush();
    EXPECT_EQ(all, "\xe4\xb8\x96!");
    // A truncated character at the end becomes U+FFFD on flush, never raw bytes.
    ds.reset();
    EXPECT_EQ(ds.push(bytes[0]), "");
    EXPECT_EQ(ds.flush(), "\xef\xbf\xbd");
    // A byte that can never start a character is replaced right away.
    ds.reset();
    const int32_t ff = t.find_token("<0xFF>");
    ASSERT_GE(ff, 0);
    EXPECT_EQ(ds.push(ff), "\xef\xbf\xbd");
}

TEST(detok_stream, BpeByteTokensAcrossPieces) {
    KVS_LOAD_TOK(l, "vocab/ggml-vocab-gpt-2.gguf");
    const tokenizer& t = *l.tok;
    const std::string text = "\xf0\x9f\xa6\x99 \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9";
    const auto ids = t.encode(text, false, false);
    detok_stream ds(t);
    std::string all;
    int n_empty = 0;
    for (int32_t id : ids) {
        const std::string c = ds.push(id);
        ASSERT_TRUE(utf8::is_valid(c));
        n_empty += c.empty();
        all += c;
    }
    all += ds.flush();
    EXPECT_EQ(all, text);
    EXPECT_GT(n_empty, 0) << "expected some tokens to carry partial characters";
}

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer for synthetic and malformed vocabularies

class gguf_writer {
public:
    void str(const std::string& key, const std::string& v) {
        kv_header(key, 8);
        put_str(v);
    }
    void u32(const std::string& key, uint32_t v) {
        kv_header(key, 4);
        put(v);
    }
    void i32(const std::string& key, int32_t v) {
        kv_header(key, 5);
        put(v);
    }
    void boolean(const std::string& key, bool v) {
        kv_header(key, 7);
        put(uint8_t(v));
    }
    template <class S>
    void str_array(const std::string& key, const S& v) {
        kv_header(key, 9);
        put(uint32_t(8));
        put(uint64_t(v.size()));
        for (const auto& s : v) put_str(std::string(s));
    }
    void f32_array(const std::string& key, const std::vector<float>& v) {
        kv_header(key, 9);
        put(uint32_t(6));
        put(uint64_t(v.size()));
        for (float x : v) put(x);
    }
    void i32_array(const std::string& key, const std::vector<int32_t>& v) {
        kv_header(key, 9);
        put(uint32_t(5));
        put(uint64_t(v.size()));
        for (int32_t x : v) put(x);
    }
    std::string bytes() const {
        std::string out;
        auto app = [&](const auto& x) { out.append(reinterpret_cast<const char*>(&x), sizeof(x)); };
        app(uint32_t(0x46554747));
        app(uint32_t(3));
        app(uint64_t(0));
        app(uint64_t(n_kv_));
        return out + body_;
    }
    std::string write(const std::string& name) const {
        const std::string path = test::temp_dir() + "/" + name;
        std::ofstream f(path, std::ios::binary);
        const std::string b = bytes();
        f.write(b.data(), std::streamsize(b.size()));
        return path;
    }

private:
    template <class T>
    void put(T v) {
        body_.append(reinterpret_cast<const char*>(&v), sizeof(v));
    }
    void put_str(const std::string& s) {
        put(uint64_t(s.size()));
        body_ += s;
    }
    void kv_header(const std::string& key, uint32_t type) {
        put_str(key);
        put(type);
        ++n_kv_;
    }
    std::string body_;
    uint64_t n_kv_ = 0;
};

result<std::unique_ptr<tokenizer>> tokenizer_from_bytes(const std::string& bytes) {
    auto f = gguf_file::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (!f) return f.error();
    return tokenizer::from_gguf(*f.value());
}

// A small valid SPM vocabulary: <unk> <s> </s>, 256 byte tokens, a few pieces.
gguf_writer tiny_spm(size_t n_scores_drop = 0, int64_t bos = 1, int32_t bad_type = -1) {
    std::vector<std::string> toks = {"<unk>", "<s>", "</s>"};
    std::vector<int32_t> types = {2, 3, 3};
    for (int b = 0; b < 256; ++b) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", b);
        toks.push_back(buf);
        types.push_back(6);
    }
    for (const char* p : {"\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a", "ab", "\xe2\x96\x81" "ab"}) {
        toks.push_back(p);
        types.push_back(1);
    }
    if (bad_type >= 0) types[10] = bad_type;
    std::vector<float> scores(toks.size() - n_scores_drop, 0.0f);
    for (size_t i = 259; i < scores.size(); ++i) scores[i] = -float(i - 259);
    gguf_writer w;
    w.str("tokenizer.ggml.model", "llama");
    w.str_array("tokenizer.ggml.tokens", toks);
    w.f32_array("tokenizer.ggml.scores", scores);
    w.i32_array("tokenizer.ggml.token_type", types);
    if (bos != 1) w.i32("tokenizer.ggml.bos_token_id", int32_t(bos));
    else w.u32("tokenizer.ggml.bos_token_id", 1);
    w.u32("tokenizer.ggml.padding_token_id", 0xFFFFFFFFu);  // "none", as llama2.c converters write
    return w;
}

TEST(tokenizer_metadata, TinySpmWorks) {
    auto t = tokenizer_from_bytes(tiny_spm().bytes());
    ASSERT_TRUE(t.is_ok()) << t.message();
    const tokenizer& tok = *t.value();
    EXPECT_EQ(tok.pad(), -1);
    EXPECT_EQ(tok.encode("ab ab", true, false), (std::vector<int32_t>{1, 264, 264}));  // "▁ab" "▁ab"
    EXPECT_EQ(tok.decode(tok.encode("ab c", true, false)), "ab c");
}

TEST(tokenizer_metadata, MismatchedScoresIsAnError) {
    auto t = tokenizer_from_bytes(tiny_spm(/*n_scores_drop=*/3).bytes());
    ASSERT_FALSE(t.is_ok());
    EXPECT_NE(t.message().find("tokenizer.ggml.scores"), std::string::npos) << t.message();
}

TEST(tokenizer_metadata, SpecialIdOutOfRangeIsAnError) {
    auto t = tokenizer_from_bytes(tiny_spm(0, /*bos=*/100000).bytes());
    ASSERT_FALSE(t.is_ok());
    EXPECT_NE(t.message().find("bos_token_id"), std::string::npos) << t.message();
    auto neg = tokenizer_from_bytes(tiny_spm(0, /*bos=*/-7).bytes());
    ASSERT_FALSE(neg.is_ok());
}

TEST(tokenizer_metadata, BadTokenTypeIsAnError) {
    auto t = tokenizer_from_bytes(tiny_spm(0, 1, /*bad_type=*/9).bytes());
    ASSERT_FALSE(t.is_ok());
    EXPECT_NE(t.message().find("token_type[10]"), std::string::npos) << t.message();
}

TEST(tokenizer_metadata, MismatchedTypesAndMissingKeysAreErrors) {
    {
        gguf_writer w;
        w.str("tokenizer.ggml.model", "llama");
        w.str_array("tokenizer.ggml.tokens", std::vector<std::string>{"<unk>", "a"});
        w.i32_array("tokenizer.ggml.token_type", {2});
        auto t = tokenizer_from_bytes(w.bytes());
        ASSERT_FALSE(t.is_ok());
        EXPECT_NE(t.message().find("token_type"), std::string::npos) << t.message();
    }
    {
        gguf_writer w;
        w.str("tokenizer.ggml.model", "llama");
        auto t = tokenizer_from_bytes(w.bytes());
        ASSERT_FALSE(t.is_ok());
        EXPECT_NE(t.message().find("tokenizer.ggml.tokens"), std::string::npos) << t.message();
    }
    {
        gguf_writer w;
        w.str("tokenizer.ggml.model", "bert");
        w.str_array("tokenizer.ggml.tokens", std::vector<std::string>{"a"});
        auto t = tokenizer_from_bytes(w.bytes());
        ASSERT_FALSE(t.is_ok());
        EXPECT_NE(t.message().find("bert"), std::string::npos) << t.message();
    }
    {
        gguf_writer w;  // wrong value type for a special id
        w.str("tokenizer.ggml.model", "llama");
        w.str_array("tokenizer.ggml.tokens", std::vector<std::string>{"<unk>", "<s>", "</s>"});
        w.str("tokenizer.ggml.eos_token_id", "2");
        EXPECT_FALSE(tokenizer_from_bytes(w.bytes()).is_ok());
    }
}

gguf_writer tiny_bpe(const std::vector<std::string>& merges, const std::string& pre = "gpt-2") {
    // The 256 byte images plus merged tokens.
    const auto& m = byte_unicode_map::get();
    std::vector<std::string> toks;
    for (int b = 0; b < 256; ++b) toks.push_back(m.byte_to_utf8[size_t(b)]);
    toks.push_back("he");
    toks.push_back("hel");
    gguf_writer w;
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", pre);
    w.str_array("tokenizer.ggml.tokens", toks);
    w.str_array("tokenizer.ggml.merges", merges);
    return w;
}

TEST(tokenizer_metadata, BpeMergesAreValidated) {
    {
        auto t = tokenizer_from_bytes(tiny_bpe({"h e", "he l"}).bytes());
        ASSERT_TRUE(t.is_ok()) << t.message();
        const auto ids = t.value()->encode("hello", false, false);
        EXPECT_EQ(ids.front(), 257) << ids_str(ids);  // "hel"
        EXPECT_EQ(t.value()->decode(ids), "hello");
    }
    {
        auto t = tokenizer_from_bytes(tiny_bpe({"h e", "hx l"}).bytes());
        ASSERT_FALSE(t.is_ok());
        EXPECT_NE(t.message().find("merges[1]"), std::string::npos) << t.message();
    }
    {
        auto t = tokenizer_from_bytes(tiny_bpe({"h e", "l l"}).bytes());  // "ll" is not a token
        ASSERT_FALSE(t.is_ok());
        EXPECT_NE(t.message().find("merged token"), std::string::npos) << t.message();
    }
    {
        auto t = tokenizer_from_bytes(tiny_bpe({"he"}).bytes());
        ASSERT_FALSE(t.is_ok());
        EXPECT_NE(t.message().find("merges[0]"), std::string::npos) << t.message();
    }
    {
        auto t = tokenizer_from_bytes(tiny_bpe({"h e"}, "no-such-pre").bytes());
        ASSERT_FALSE(t.is_ok());
        EXPECT_NE(t.message().find("no-such-pre"), std::string::npos) << t.message();
    }
}

TEST(tokenizer_metadata, TruncatedFilesNeverCrash) {
    const std::string full = tiny_spm().bytes();
    for (size_t n = 0; n < full.size(); n += 97) {
        auto t = tokenizer_from_bytes(full.substr(0, n));
        EXPECT_FALSE(t.is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers on real merges: the GPT-2 vocabulary relabelled with each pre-tokenizer name
// (llama-bpe and qwen2 have no shared vocabulary of their own), compared with the reference.

TEST(pretokenizer, EveryNameMatchesReferenceOnGpt2Merges) {
    KVS_SKIP_IF_MISSING(path, "vocab/ggml-vocab-gpt-2.gguf");
    std::string why;
    if (!python_available(&why)) GTEST_SKIP() << "independent reference unavailable: " << why;
    auto src = gguf_file::open(path);
    ASSERT_TRUE(src.is_ok()) << src.message();
    const gguf_file& g = *src.value();
    auto toks = g.get_string_array("tokenizer.ggml.tokens");
    auto merges = g.get_string_array("tokenizer.ggml.merges");
    auto types = g.get_int_array("tokenizer.ggml.token_type");
    ASSERT_TRUE(toks && merges && types);
    std::vector<int32_t> types32(types->begin(), types->end());
    std::vector<ref_case> cases;
    for (const auto& t : corpus()) cases.push_back({t, false, false});
    for (const char* pre : {"llama-bpe", "qwen2", "falcon", "starcoder", "deepseek-coder", "default"}) {
        gguf_writer w;
        w.str("tokenizer.ggml.model", "gpt2");
        w.str("tokenizer.ggml.pre", pre);
        w.str_array("tokenizer.ggml.tokens", *toks.value());
        w.i32_array("tokenizer.ggml.token_type", types32);
        w.str_array("tokenizer.ggml.merges", *merges.value());
        w.u32("tokenizer.ggml.bos_token_id", 50256);
        const std::string p = w.write(std::string("gpt2-as-") + pre + ".gguf");
        loaded l = load_tokenizer(p);
        ASSERT_TRUE(l.tok);
        EXPECT_EQ(l.tok->pre(), pre);
        expect_matches_reference(*l.tok, p, cases, std::string("gpt2-as-") + pre);
        for (const auto& c : cases) EXPECT_EQ(l.tok->decode(l.tok->encode(c.text, false, false)), c.text);
    }
}

TEST(pretokenizer, SplitsAsDocumented) {
    auto p = pretokenizer::create("gpt-2");
    ASSERT_TRUE(p.is_ok()) << p.message();
    const std::string text = "Hello world's  test\n\n123 !!";
    std::vector<text_span> spans;
    p.value()->split(text, spans);
    std::vector<std::string> words;
    size_t covered = 0;
    for (const auto& s : spans) {
        EXPECT_EQ(s.offset, covered);
        covered += s.length;
        words.push_back(text.substr(s.offset, s.length));
    }
    EXPECT_EQ(covered, text.size());
    EXPECT_EQ(words, (std::vector<std::string>{"Hello", " world", "'s", " ", " test", "\n", "\n", "123", " !!"}));

    auto l3 = pretokenizer::create("llama-bpe");
    ASSERT_TRUE(l3.is_ok());
    EXPECT_TRUE(l3.value()->ignore_merges());
    spans.clear();
    const std::string digits = "12345 abc";
    l3.value()->split(digits, spans);
    ASSERT_GE(spans.size(), 2u);
    EXPECT_EQ(digits.substr(spans[0].offset, spans[0].length), "123");
    EXPECT_EQ(digits.substr(spans[1].offset, spans[1].length), "45");

    auto bad = pretokenizer::create("unknown-pre");
    ASSERT_FALSE(bad.is_ok());
    EXPECT_NE(bad.message().find("qwen2"), std::string::npos) << bad.message();
}

}  // namespace
}  // namespace kvs
