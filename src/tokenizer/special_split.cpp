#include "tokenizer/special_split.h"

#include "tokenizer/vocab.h"

namespace kvs {

std::vector<text_fragment> split_special(std::string_view text, const vocab& v, bool parse_special) {
    std::vector<text_fragment> frags;
    if (text.empty()) return frags;
    frags.push_back({-1, 0, text.size()});
    std::vector<text_fragment> next;
    for (int32_t id : v.special_ids) {
        const token_type t = v.type[size_t(id)];
        if (!parse_special && t != token_type::user_defined) continue;
        const std::string_view needle = v.text[size_t(id)];
        bool found_any = false;
        next.clear();
        for (const text_fragment& f : frags) {
            if (f.token >= 0 || f.length < needle.size()) {
                next.push_back(f);
                continue;
            }
            const std::string_view hay = text.substr(f.offset, f.length);
            size_t pos = 0;
            for (;;) {
                const size_t hit = hay.find(needle, pos);
                if (hit == std::string_view::npos) break;
                found_any = true;
                if (hit > pos) next.push_back({-1, f.offset + pos, hit - pos});
                next.push_back({id, f.offset + hit, needle.size()});
                pos = hit + needle.size();
            }
            if (pos < hay.size()) next.push_back({-1, f.offset + pos, hay.size() - pos});
        }
        if (found_any) frags.swap(next);
    }
    return frags;
}

}  // namespace kvs
