// SentencePiece-style BPE (tokenizer.ggml.model = "llama"), as llama.cpp runs it:
//   1. spaces become U+2581; a U+2581 is prepended when add_space_prefix and the fragment
//      starts the text or follows a special token;
//   2. the text is split into UTF-8 characters (an invalid byte is a character of its own);
//   3. repeatedly, the adjacent pair whose concatenation is a vocabulary token with the highest
//      score is merged (ties: the leftmost pair), using a max-heap of candidate pairs and a
//      linked list of symbols: O(n log n) in the fragment length;
//   4. every remaining symbol is looked up; one that is not a token is written as <0xXX> byte
//      tokens (byte fallback), or the unknown token if the vocabulary lacks byte tokens.
// Speed-up with identical results: when no vocabulary token contains U+2581 right after another
// character (true of real SentencePiece vocabularies, trained with split_by_whitespace), no
// merge can cross the point before a U+2581 that follows another character, so the text is cut
// into words there, each merged on its own and cached for the rest of the call.
#include <queue>
#include <string>
#include <unordered_map>

#include "tokenizer/token_model.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace kvs {

namespace {

struct spm_symbol {
    size_t offset;  // bytes into the escaped text
    size_t n;       // bytes; 0 once merged into its left neighbour
    int prev, next;  // symbol indices, -1 at the ends
};

struct spm_bigram {
    float score;
    int left, right;  // symbol indices
    size_t size;      // bytes of the merged text when the pair was queued
};

struct spm_bigram_order {
    bool operator()(const spm_bigram& a, const spm_bigram& b) const {
        // priority_queue pops the "largest": highest score, then smallest left index.
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
};

class spm_model final : public token_model {
public:
    explicit spm_model(const vocab& v) : v_(v) {
        split_words_ = true;
        for (const std::string& t : v.text) {
            for (size_t p = t.find(utf8::spm_space, 1); p != std::string::npos; p = t.find(utf8::spm_space, p + 1)) {
                if (p < 3 || t.compare(p - 3, 3, utf8::spm_space) != 0) {
                    split_words_ = false;
                    break;
                }
            }
            if (!split_words_) break;
        }
        for (int b = 0; b < 256; ++b) {
            static const char* hex = "0123456789ABCDEF";
            const char name[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
            int32_t id = v.find(name);
            if (id < 0) id = v.find(std::string_view(reinterpret_cast<const char*>(&b), 1));
            byte_token_[b] = id >= 0 ? id : v.unk;
        }
    }

    void encode_fragment(std::string_view text, bool after_special,
                         std::vector<int32_t>& out) const override {
        std::string s;
        s.reserve(text.size() + 3 + text.size() / 4);
        if (v_.add_space_prefix && after_special) s += utf8::spm_space;
        for (char c : text) {
            if (c == ' ') s += utf8::spm_space;
            else s += c;
        }
        if (!split_words_) {
            encode_word(s, out);
            return;
        }
        word_memo memo;
        const std::string_view all(s);
        size_t start = 0;
        for (size_t p = all.find(utf8::spm_space, 1);; p = all.find(utf8::spm_space, p + 3)) {
            if (p != std::string_view::npos && p >= 3 && all.compare(p - 3, 3, utf8::spm_space) == 0)
                continue;  // a run of U+2581 stays together
            const size_t end = p == std::string_view::npos ? all.size() : p;
            memo.append(all.substr(start, end - start), out,
                        [&](std::string_view word, std::vector<int32_t>& ids) { encode_word(word, ids); });
            if (p == std::string_view::npos) break;
            start = p;
        }
    }

private:
    void encode_word(std::string_view s, std::vector<int32_t>& out) const {
        std::vector<spm_symbol> sym;
        sym.reserve(s.size());
        for (size_t i = 0; i < s.size();) {
            const size_t n = utf8::char_len(s, i);
            const int idx = int(sym.size());
            sym.push_back({i, n, idx - 1, -1});
            if (idx > 0) sym[size_t(idx - 1)].next = idx;
            i += n;
        }
        std::priority_queue<spm_bigram, std::vector<spm_bigram>, spm_bigram_order> queue;
        auto try_add = [&](int l, int r) {
            if (l < 0 || r < 0) return;
            const size_t size = sym[size_t(l)].n + sym[size_t(r)].n;
            const int32_t id = v_.find(s.substr(sym[size_t(l)].offset, size));
            if (id < 0) return;
            queue.push({v_.score[size_t(id)], l, r, size});
        };
        for (int i = 1; i < int(sym.size()); ++i) try_add(i - 1, i);
        while (!queue.empty()) {
            const spm_bigram b = queue.top();
            queue.pop();
            spm_symbol& l = sym[size_t(b.left)];
            spm_symbol& r = sym[size_t(b.right)];
            if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;  // stale pair
            l.n += r.n;
            r.n = 0;
            l.next = r.next;
            if (r.next >= 0) sym[size_t(r.next)].prev = b.left;
            try_add(l.prev, b.left);
            try_add(b.left, l.next);
        }
        for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[size_t(i)].next) {
            const std::string_view piece = s.substr(sym[size_t(i)].offset, sym[size_t(i)].n);
            const int32_t id = v_.find(piece);
            if (id >= 0) {
                out.push_back(id);
                continue;
            }
            for (char c : piece) {
                const int32_t bt = byte_token_[uint8_t(c)];
                if (bt >= 0) out.push_back(bt);
            }
        }
    }

    const vocab& v_;
    int32_t byte_token_[256];  // id of <0xXX> for each byte (or unk, or -1)
    bool split_words_;         // merges never cross "x|▁" (see the top of this file)
};

}  // namespace

std::unique_ptr<token_model> spm_model_create(const vocab& v) { return std::make_unique<spm_model>(v); }

}  // namespace kvs
