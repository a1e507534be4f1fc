// Errors as values: every fallible operation returns `status` or `result<T>` carrying a
// message a user can act on ("tensor blk.3.attn_q.weight: expected 2 dims, got 3").
// Nothing in kvserve aborts on bad input.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace kvs {

class status {
public:
    status() = default;  // ok
    static status ok() { return {}; }
    static status error(std::string message, int code = 0) {
        status s;
        s.message_ = std::move(message);
        s.failed_ = true;
        s.code_ = code;
        return s;
    }
    // An optional machine-readable kind (e.g. an HTTP status the server maps it to); 0 = none.
    int code() const { return code_; }
    bool is_ok() const { return !failed_; }
    explicit operator bool() const { return !failed_; }
    const std::string& message() const { return message_; }
    // Prepends context: status::error("bad dims").with_context("tensor x") -> "tensor x: bad dims".
    status with_context(const std::string& context) const {
        if (!failed_) return *this;
        return error(context + ": " + message_, code_);
    }

private:
    std::string message_;
    bool failed_ = false;
    int code_ = 0;
};

template <class T>
class result {
public:
    result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
    result(status error) : v_(std::move(error)) {}  // NOLINT: must be an error status
    bool is_ok() const { return std::holds_alternative<T>(v_); }
    explicit operator bool() const { return is_ok(); }
    T& value() & { return std::get<T>(v_); }
    const T& value() const& { return std::get<T>(v_); }
    T&& value() && { return std::get<T>(std::move(v_)); }
    T* operator->() { return &std::get<T>(v_); }
    const T* operator->() const { return &std::get<T>(v_); }
    T& operator*() & { return std::get<T>(v_); }
    status error() const { return is_ok() ? status::ok() : std::get<status>(v_); }
    const std::string& message() const {
        static const std::string empty;
        return is_ok() ? empty : std::get<status>(v_).message();
    }

private:
    std::variant<T, status> v_;
};

std::string strfmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace kvs

// Propagates an error status from an expression returning `status`.
#define KVS_TRY(expr)                        \
    do {                                     \
        ::kvs::status kvs_s_ = (expr);       \
        if (!kvs_s_.is_ok()) return kvs_s_;  \
    } while (0)
