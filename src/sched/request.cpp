#include "sched/request.h"

#include <chrono>

namespace kvs {

const char* finish_reason_name(finish_reason r) {
    switch (r) {
        case finish_reason::stop: return "stop";
        case finish_reason::length: return "length";
        case finish_reason::cancelled: return "cancelled";
        case finish_reason::error: return "error";
        default: return "";
    }
}

void request_stream::push(request_event ev) {
    {
        std::lock_guard<std::mutex> l(mu_);
        if (ev.finish != finish_reason::none) ++finished_;
        events_.push_back(std::move(ev));
    }
    cv_.notify_all();
}

std::optional<request_event> request_stream::pop(int timeout_ms) {
    std::unique_lock<std::mutex> l(mu_);
    auto ready = [&] { return !events_.empty() || finished_ >= expected_; };
    if (timeout_ms < 0) {
        cv_.wait(l, ready);
    } else if (!cv_.wait_for(l, std::chrono::milliseconds(timeout_ms), ready)) {
        return std::nullopt;
    }
    if (events_.empty()) return std::nullopt;
    request_event ev = std::move(events_.front());
    events_.pop_front();
    return ev;
}

bool request_stream::done() const {
    std::lock_guard<std::mutex> l(mu_);
    return events_.empty() && finished_ >= expected_;
}

}  // namespace kvs
