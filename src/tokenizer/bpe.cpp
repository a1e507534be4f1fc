// Byte-level BPE (tokenizer.ggml.model = "gpt2"):
//   1. the pre-tokenizer splits a fragment into words (pretokenize.cpp);
//   2. each word starts as one symbol per byte: the token whose text is the byte's GPT-2
//      printable code point;
//   3. repeatedly, the adjacent pair with the lowest merge rank is merged (ties: leftmost), with
//      a min-heap of candidate pairs keyed by (left id, right id) -> (rank, merged id):
//      O(n log n) per word;
//   4. words are cached for the duration of one encode call (natural text repeats words a lot).
// Llama 3 style pre-tokenizers skip step 3 for words that are vocabulary tokens as a whole.
#include <queue>
#include <string>
#include <unordered_map>

#include "gguf/gguf.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/token_model.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace kvs {

namespace {

struct bpe_merge {
    int32_t rank;    // position in tokenizer.ggml.merges: lower merges first
    int32_t merged;  // id of the concatenated token
};

inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

struct bpe_symbol {
    int32_t id;      // token id; -1 once merged into its left neighbour
    int prev, next;  // symbol indices, -1 at the ends
};

struct bpe_candidate {
    int32_t rank;
    int left, right;          // symbol indices
    int32_t left_id, right_id;  // ids when queued (stale if either changed)
};

struct bpe_candidate_order {
    bool operator()(const bpe_candidate& a, const bpe_candidate& b) const {
        // priority_queue pops the "largest": lowest rank, then smallest left index.
        return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
};

class bpe_model final : public token_model {
public:
    bpe_model(const vocab& v, std::unique_ptr<pretokenizer> pre) : v_(v), pre_(std::move(pre)) {
        const auto& m = byte_unicode_map::get();
        for (int b = 0; b < 256; ++b) byte_token_[b] = v.find(m.byte_to_utf8[size_t(b)]);
    }

    status load_merges(const gguf_file& f) {
        if (!f.find("tokenizer.ggml.merges"))
            return status::error("tokenizer.ggml.merges is missing (required for gpt2 vocabularies)");
        auto merges = f.get_string_array("tokenizer.ggml.merges");
        if (!merges) return merges.error();
        const auto& list = *merges.value();
        merges_.reserve(list.size());
        std::string joined;
        for (size_t i = 0; i < list.size(); ++i) {
            const std::string_view m = list[i];
            // The separator is the first space after the first character: a merge's left part
            // never contains a space (spaces are mapped to U+0120 in byte-level vocabularies).
            const size_t sep = m.empty() ? std::string_view::npos : m.find(' ', utf8::char_len(m, 0));
            if (sep == std::string_view::npos || sep + 1 >= m.size())
                return status::error(strfmt("tokenizer.ggml.merges[%zu] '%.*s' is not two tokens "
                                            "separated by a space", i, int(m.size()), m.data()));
            const std::string_view a = m.substr(0, sep), b = m.substr(sep + 1);
            const int32_t ia = v_.find(a), ib = v_.find(b);
            joined.assign(a);
            joined.append(b);
            const int32_t im = v_.find(joined);
            if (ia < 0 || ib < 0 || im < 0)
                return status::error(strfmt("tokenizer.ggml.merges[%zu] '%.*s': %s '%.*s' is not in "
                                            "the vocabulary", i, int(m.size()), m.data(),
                                            ia < 0 ? "left token" : ib < 0 ? "right token" : "merged token",
                                            int(ia < 0 ? a.size() : ib < 0 ? b.size() : joined.size()),
                                            ia < 0 ? a.data() : ib < 0 ? b.data() : joined.data()));
            // Duplicates keep their first (lowest) rank.
            merges_.emplace(pair_key(ia, ib), bpe_merge{int32_t(i), im});
        }
        return status::ok();
    }

    void encode_fragment(std::string_view text, bool, std::vector<int32_t>& out) const override {
        std::vector<text_span> words;
        pre_->split(text, words);
        word_memo memo;
        for (const text_span& w : words)
            memo.append(text.substr(w.offset, w.length), out,
                        [&](std::string_view word, std::vector<int32_t>& ids) { encode_word(word, ids); });
    }

private:
    void encode_word(std::string_view word, std::vector<int32_t>& out) const {
        const auto& m = byte_unicode_map::get();
        if (pre_->ignore_merges()) {
            std::string mapped;
            for (char c : word) mapped += m.byte_to_utf8[uint8_t(c)];
            const int32_t id = v_.find(mapped);
            if (id >= 0) {
                out.push_back(id);
                return;
            }
        }
        std::vector<bpe_symbol> sym(word.size());
        for (size_t i = 0; i < word.size(); ++i)
            sym[i] = {byte_token_[uint8_t(word[i])], int(i) - 1, i + 1 < word.size() ? int(i) + 1 : -1};
        std::priority_queue<bpe_candidate, std::vector<bpe_candidate>, bpe_candidate_order> queue;
        auto try_add = [&](int l, int r) {
            if (l < 0 || r < 0) return;
            const int32_t a = sym[size_t(l)].id, b = sym[size_t(r)].id;
            if (a < 0 || b < 0) return;
            auto it = merges_.find(pair_key(a, b));
            if (it != merges_.end()) queue.push({it->second.rank, l, r, a, b});
        };
        for (int i = 1; i < int(sym.size()); ++i) try_add(i - 1, i);
        while (!queue.empty()) {
            const bpe_candidate c = queue.top();
            queue.pop();
            bpe_symbol& l = sym[size_t(c.left)];
            bpe_symbol& r = sym[size_t(c.right)];
            if (l.id != c.left_id || r.id != c.right_id || l.next != c.right) continue;  // stale
            l.id = merges_.at(pair_key(c.left_id, c.right_id)).merged;
            r.id = -1;
            l.next = r.next;
            if (r.next >= 0) sym[size_t(r.next)].prev = c.left;
            try_add(l.prev, c.left);
            try_add(c.left, l.next);
        }
        for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[size_t(i)].next) {
            if (sym[size_t(i)].id >= 0) out.push_back(sym[size_t(i)].id);
            else if (v_.unk >= 0) out.push_back(v_.unk);  // a byte the vocabulary cannot spell
        }
    }

    const vocab& v_;
    std::unique_ptr<pretokenizer> pre_;
    std::unordered_map<uint64_t, bpe_merge> merges_;  // (left id, right id) -> rank, merged id
    int32_t byte_token_[256];  // id of each byte's printable code point, or -1
};

}  // namespace

result<std::unique_ptr<token_model>> bpe_model_create(const vocab& v, const gguf_file& file) {
    auto pre = pretokenizer::create(v.pre);
    if (!pre) return pre.error();
    auto model = std::make_unique<bpe_model>(v, std::move(pre.value()));
    status s = model->load_merges(file);
    if (!s) return s;
    return std::unique_ptr<token_model>(std::move(model));
}

}  // namespace kvs
