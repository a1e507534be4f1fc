#include "chat/lexer.h"

#include <charconv>

#include "chat/error.h"
#include "chat/unicode.h"

namespace kvs::jinja {

std::string normalize_source(std::string_view source) {
    std::string out;
    out.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
        if (source[i] == '\r') {
            if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
            out += '\n';
        } else {
            out += source[i];
        }
    }
    if (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

class lexer {
public:
    explicit lexer(std::string_view src) : s_(src) {}

    std::vector<token> run() {
        while (pos_ < s_.size()) {
            const size_t p = find_tag_start(pos_);
            if (p == std::string_view::npos) {
                emit_text(s_.substr(pos_), pos_);
                break;
            }
            const char kind = s_[p + 1];
            size_t q = p + 2;
            char sign = 0;
            if (q < s_.size() && (s_[q] == '-' || s_[q] == '+')) sign = s_[q++];
            std::string_view text = s_.substr(pos_, p - pos_);
            if (sign == '-') text = rstrip(text);
            else if (sign != '+' && kind != '{') text = lstrip_line(text);
            emit_text(text, pos_);
            if (kind == '#') lex_comment(p, q);
            else if (kind == '%' && lex_raw(p, q)) continue;
            else lex_tag(p, q, kind == '%');
        }
        push(tok::eof, s_.size());
        return std::move(out_);
    }

private:
    size_t find_tag_start(size_t from) const {
        for (size_t i = s_.find('{', from); i != std::string_view::npos; i = s_.find('{', i + 1)) {
            if (i + 1 < s_.size() && (s_[i + 1] == '{' || s_[i + 1] == '%' || s_[i + 1] == '#')) return i;
        }
        return std::string_view::npos;
    }

    void push(tok k, size_t pos, std::string text = {}) {
        token t;
        t.kind = k;
        t.pos = pos;
        t.text = std::move(text);
        out_.push_back(std::move(t));
    }

    void emit_text(std::string_view text, size_t pos) {
        if (!text.empty()) push(tok::text, pos, std::string(text));
    }

    static std::string_view rstrip(std::string_view text) {
        size_t end = 0;
        for (size_t i = 0; i < text.size();) {
            if (!py_isspace(utf8_next(text, i))) end = i;
        }
        return text.substr(0, end);
    }

    size_t skip_space(size_t i) const {
        while (i < s_.size()) {
            size_t j = i;
            if (!py_isspace(utf8_next(s_, j))) break;
            i = j;
        }
        return i;
    }

    // lstrip_blocks: whitespace between the last newline (or a line start) and the tag goes.
    std::string_view lstrip_line(std::string_view text) const {
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
        if ((l_pos == 0 && !line_starting_) || l_pos >= text.size()) return text;
        for (size_t i = l_pos; i < text.size();) {
            if (!py_isspace(utf8_next(text, i))) return text;
        }
        return text.substr(0, l_pos);
    }

    // After a block or comment end: trim_blocks eats one "\n"; "-" eats all whitespace.
    void finish_block_end(size_t after_end, char sign) {
        size_t i = after_end;
        if (sign == '-') i = skip_space(i);
        else if (sign != '+' && i < s_.size() && s_[i] == '\n') ++i;
        line_starting_ = i > 0 && s_[i - 1] == '\n' && i != after_end;
        pos_ = i;
    }

    void lex_comment(size_t start, size_t body) {
        const size_t end = s_.find("#}", body);
        if (end == std::string_view::npos) fail("unterminated comment (missing '#}')", start);
        char sign = 0;
        if (end > body && (s_[end - 1] == '-' || s_[end - 1] == '+')) sign = s_[end - 1];
        finish_block_end(end + 2, sign);
    }

    // {% raw %}...{% endraw %}: the body is text, whatever it contains.
    bool lex_raw(size_t start, size_t body) {
        size_t i = skip_space(body);
        if (s_.compare(i, 3, "raw") != 0) return false;
        i = skip_space(i + 3);
        bool strip_after = false;
        if (s_.compare(i, 3, "-%}") == 0) {
            strip_after = true;
            i += 3;
        } else if (s_.compare(i, 2, "%}") == 0) {
            i += 2;
        } else {
            return false;
        }
        if (strip_after) i = skip_space(i);
        for (size_t p = s_.find("{%", i); p != std::string_view::npos; p = s_.find("{%", p + 2)) {
            size_t q = p + 2;
            char sign = 0;
            if (q < s_.size() && (s_[q] == '-' || s_[q] == '+')) sign = s_[q++];
            q = skip_space(q);
            if (s_.compare(q, 6, "endraw") != 0) continue;
            q = skip_space(q + 6);
            char end_sign = 0;
            if (q < s_.size() && (s_[q] == '-' || s_[q] == '+')) end_sign = s_[q++];
            if (s_.compare(q, 2, "%}") != 0) continue;
            std::string_view text = s_.substr(i, p - i);
            line_starting_ = false;
            if (sign == '-') text = rstrip(text);
            else if (sign != '+') text = lstrip_line(text);
            emit_text(text, i);
            finish_block_end(q + 2, end_sign);
            return true;
        }
        fail("unterminated 'raw' block (missing '{% endraw %}')", start);
    }

    void lex_tag(size_t start, size_t body, bool block) {
        push(block ? tok::block_begin : tok::var_begin, start);
        std::string brackets;  // open brackets, innermost last
        size_t i = body;
        while (true) {
            i = skip_space(i);
            if (i >= s_.size()) {
                fail(std::string("unterminated ") + (block ? "block tag (missing '%}')" : "expression (missing '}}')"),
                     start);
            }
            if (brackets.empty()) {
                const std::string_view end = block ? "%}" : "}}";
                char sign = 0;
                size_t e = i;
                if ((s_[i] == '-' || (block && s_[i] == '+')) && s_.compare(i + 1, 2, end) == 0) sign = s_[e++];
                if (s_.compare(e, 2, end) == 0) {
                    push(block ? tok::block_end : tok::var_end, i);
                    if (block) {
                        finish_block_end(e + 2, sign);
                    } else {
                        pos_ = sign == '-' ? skip_space(e + 2) : e + 2;
                        line_starting_ = pos_ > e + 2 && s_[pos_ - 1] == '\n';
                    }
                    return;
                }
            }
            i = lex_expression_token(i, brackets);
        }
    }

    size_t lex_expression_token(size_t i, std::string& brackets) {
        const char c = s_[i];
        if (is_digit(c)) return lex_number(i);
        if (is_name_start(c)) {
            size_t j = i;
            while (j < s_.size() && is_name_char(s_[j])) ++j;
            push(tok::name, i, std::string(s_.substr(i, j - i)));
            return j;
        }
        if (c == '\'' || c == '"') return lex_string(i);
        static const char* const two_char[] = {"//", "**", "==", "!=", ">=", "<="};
        for (const char* op : two_char) {
            if (s_.compare(i, 2, op) == 0) {
                push(tok::op, i, op);
                return i + 2;
            }
        }
        static const std::string_view single = "+-/*%~[](){}><=.:|,;";
        if (single.find(c) == std::string_view::npos) {
            size_t j = i;
            std::string ch;
            utf8_append(ch, utf8_next(s_, j));
            fail("unexpected character '" + ch + "' in tag", i);
        }
        if (c == '(' || c == '[' || c == '{') {
            brackets += c;
        } else if (c == ')' || c == ']' || c == '}') {
            const char open = c == ')' ? '(' : c == ']' ? '[' : '{';
            if (brackets.empty() || brackets.back() != open) fail(std::string("unexpected '") + c + "'", i);
            brackets.pop_back();
        }
        push(tok::op, i, std::string(1, c));
        return i + 1;
    }

    // Digits with optional '_' separators between them; returns the end.
    size_t scan_digits(size_t i, std::string& digits) const {
        while (i < s_.size()) {
            if (is_digit(s_[i])) digits += s_[i++];
            else if (s_[i] == '_' && i + 1 < s_.size() && is_digit(s_[i + 1]) && !digits.empty()) ++i;
            else break;
        }
        return i;
    }

    size_t lex_number(size_t i) {
        std::string digits;
        size_t j = scan_digits(i, digits);
        bool is_float = false;
        const bool after_dot = i > 0 && s_[i - 1] == '.';  // "x.0.1" is item access, not a float
        if (!after_dot && j + 1 < s_.size() && s_[j] == '.' && is_digit(s_[j + 1])) {
            digits += '.';
            j = scan_digits(j + 1, digits);
            is_float = true;
        }
        if (!after_dot && j < s_.size() && (s_[j] == 'e' || s_[j] == 'E')) {
            size_t k = j + 1;
            std::string exp = "e";
            if (k < s_.size() && (s_[k] == '+' || s_[k] == '-')) exp += s_[k++];
            if (k < s_.size() && is_digit(s_[k])) {
                j = scan_digits(k, exp);
                digits += exp;
                is_float = true;
            }
        }
        token t;
        t.pos = i;
        t.text = digits;
        if (is_float) {
            t.kind = tok::floating;
            std::from_chars(digits.data(), digits.data() + digits.size(), t.float_value);
        } else {
            t.kind = tok::integer;
            const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), t.int_value);
            if (r.ec != std::errc()) fail("integer literal " + digits + " is too large", i);
        }
        out_.push_back(std::move(t));
        return j;
    }

    static int hex_value(char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    }

    // Python "unicode-escape" decoding of a string literal body, as Jinja2 applies it.
    size_t lex_string(size_t i) {
        const char quote = s_[i];
        std::string out;
        size_t j = i + 1;
        while (true) {
            if (j >= s_.size()) fail("unterminated string literal", i);
            const char c = s_[j];
            if (c == quote) break;
            if (c != '\\') {
                out += c;
                ++j;
                continue;
            }
            if (j + 1 >= s_.size()) fail("unterminated string literal", i);
            const char e = s_[j + 1];
            j += 2;
            switch (e) {
                case '\n': break;
                case '\\': out += '\\'; break;
                case '\'': out += '\''; break;
                case '"': out += '"'; break;
                case 'a': out += '\a'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'v': out += '\v'; break;
                case 'x':
                case 'u':
                case 'U': {
                    const int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                    char32_t cp = 0;
                    for (int k = 0; k < n; ++k) {
                        const int h = j < s_.size() ? hex_value(s_[j]) : -1;
                        if (h < 0) fail(std::string("truncated \\") + e + " escape in string literal", i);
                        cp = cp * 16 + static_cast<char32_t>(h);
                        ++j;
                    }
                    if (cp > 0x10FFFF) fail("illegal Unicode character in string literal", i);
                    utf8_append(out, cp);
                    break;
                }
                case 'N': fail("\\N{...} escapes are not supported in string literals", i);
                default:
                    if (e >= '0' && e <= '7') {
                        char32_t cp = static_cast<char32_t>(e - '0');
                        for (int k = 0; k < 2 && j < s_.size() && s_[j] >= '0' && s_[j] <= '7'; ++k)
                            cp = cp * 8 + static_cast<char32_t>(s_[j++] - '0');
                        utf8_append(out, cp);
                    } else {
                        out += '\\';
                        out += e;
                    }
            }
        }
        push(tok::string, i, std::move(out));
        return j + 1;
    }

    std::string_view s_;
    size_t pos_ = 0;
    bool line_starting_ = true;  // the previous tag ended a line (or we are at the start)
    std::vector<token> out_;
};

}  // namespace

std::vector<token> lex(std::string_view src) { return lexer(src).run(); }

}  // namespace kvs::jinja
