#include "server/signals.h"

#include <csignal>
#include <ctime>

#include <pthread.h>

namespace kvs {

namespace {

sigset_t termination_set() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}

}  // namespace

void termination_watch::block_signals() {
    sigset_t set = termination_set();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

termination_watch::termination_watch(std::function<void(int)> on_signal) {
    thread_ = std::thread([this, fn = std::move(on_signal)] {
        const sigset_t set = termination_set();
        const timespec wait = {0, 100 * 1000 * 1000};  // poll the stop flag every 100 ms
        while (!stop_.load(std::memory_order_acquire)) {
            const int sig = sigtimedwait(&set, nullptr, &wait);
            if (sig > 0) fn(sig);
        }
    });
}

termination_watch::~termination_watch() {
    stop_.store(true, std::memory_order_release);
    if (thread_.joinable()) thread_.join();
}

}  // namespace kvs
