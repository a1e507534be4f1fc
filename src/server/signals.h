// SIGINT / SIGTERM as ordinary events for a graceful drain (the hook kvserve serve uses).
//
// Usage: call termination_watch::block_signals() first in main(), before any thread starts, so
// every thread inherits the blocked mask and no thread is interrupted; then construct a
// termination_watch whose callback starts http_server::shutdown(true). The callback runs on
// the watch's own thread, once per signal received (a second Ctrl-C can force an exit).
// Destroying the watch stops its thread (within ~100 ms).
#pragma once

#include <atomic>
#include <functional>
#include <thread>

namespace kvs {

class termination_watch {
public:
    static void block_signals();
    explicit termination_watch(std::function<void(int signal)> on_signal);
    ~termination_watch();
    termination_watch(const termination_watch&) = delete;
    termination_watch& operator=(const termination_watch&) = delete;

private:
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace kvs
