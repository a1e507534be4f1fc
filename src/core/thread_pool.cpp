// Fork/join thread pool.
//
// Protocol (one job at a time, published by the owning thread):
//   run():   write the job (fn, n_tasks, next = 0, pending = n_workers), then bump `generation`.
//            Workers that are asleep are woken through `work_cv`; the caller then takes tasks
//            itself and finally waits until `pending` drops to 0.
//   worker:  wait until `generation` differs from the last one it served (spin, then sleep),
//            take tasks from `next` until exhausted, then decrement `pending`.
// A worker touches the job only between observing the new generation and decrementing
// `pending`, so once `pending` is 0 the caller may overwrite the job for the next run.
//
// Sleeping without lost wake-ups uses the usual flag + mutex handshake in both directions:
// the sleeper announces itself (`n_sleeping` / `caller_sleeping`, seq_cst) before re-checking
// the condition under the mutex; the waker changes the condition (seq_cst) before reading the
// announcement. Sequential consistency guarantees at least one side sees the other, and the
// waker takes the mutex before notifying, so a sleeper between its check and its wait cannot
// miss the notification.
#include "core/thread_pool.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace kvs {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Waiting is three-staged. First spin with `pause` (~10-30 ns each): a few microseconds,
// enough to bridge back-to-back kernels of one forward pass at the lowest latency. Then spin
// with sched_yield: if the machine is oversubscribed (more runnable threads than cores),
// a pure spinner would burn the time slice that the thread it waits for needs; yielding
// hands it over. Finally sleep on a condition variable, so an idle engine uses no CPU.
constexpr int spin_pauses = 256;
constexpr int spin_yields = 256;

// Waits until pred() holds or the spin budget is spent; returns pred().
template <class pred_fn>
bool spin_until(pred_fn pred) {
    for (int i = 0; i < spin_pauses; ++i) {
        if (pred()) return true;
        cpu_relax();
    }
    for (int i = 0; i < spin_yields; ++i) {
        if (pred()) return true;
        std::this_thread::yield();
    }
    return pred();
}

}  // namespace

struct thread_pool::impl {
    int n_threads = 1;
    std::vector<std::thread> workers;  // n_threads - 1 threads; the caller is thread 0

    // The current job (valid while pending > 0 for workers).
    const std::function<void(int64_t, int)>* fn = nullptr;
    int64_t n_tasks = 0;
    alignas(64) std::atomic<int64_t> next{0};     // next task to hand out
    alignas(64) std::atomic<int> pending{0};      // workers not yet done with the job
    alignas(64) std::atomic<uint64_t> generation{0};
    std::atomic<bool> stop{false};

    std::mutex work_mutex;
    std::condition_variable work_cv;
    std::atomic<int> n_sleeping{0};

    std::mutex done_mutex;
    std::condition_variable done_cv;
    std::atomic<bool> caller_sleeping{false};

    void work(int thread) {
        const auto& f = *fn;
        for (;;) {
            int64_t t = next.fetch_add(1, std::memory_order_relaxed);
            if (t >= n_tasks) break;
            f(t, thread);
        }
    }

    void worker_loop(int thread) {
        uint64_t seen = 0;
        for (;;) {
            uint64_t g = seen;
            spin_until([&] { return (g = generation.load(std::memory_order_acquire)) != seen; });
            if (g == seen) {
                std::unique_lock<std::mutex> lock(work_mutex);
                n_sleeping.fetch_add(1, std::memory_order_seq_cst);
                while ((g = generation.load(std::memory_order_seq_cst)) == seen) work_cv.wait(lock);
                n_sleeping.fetch_sub(1, std::memory_order_relaxed);
            }
            seen = g;
            if (stop.load(std::memory_order_acquire)) return;
            work(thread);
            if (pending.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
                caller_sleeping.load(std::memory_order_seq_cst)) {
                std::lock_guard<std::mutex> lock(done_mutex);
                done_cv.notify_one();
            }
        }
    }

    // Publishes the current job fields (or the stop flag) to the workers.
    void publish() {
        generation.fetch_add(1, std::memory_order_seq_cst);
        if (n_sleeping.load(std::memory_order_seq_cst) > 0) {
            { std::lock_guard<std::mutex> lock(work_mutex); }
            work_cv.notify_all();
        }
    }

    void wait_done() {
        if (spin_until([&] { return pending.load(std::memory_order_acquire) == 0; })) return;
        std::unique_lock<std::mutex> lock(done_mutex);
        caller_sleeping.store(true, std::memory_order_seq_cst);
        while (pending.load(std::memory_order_seq_cst) != 0) done_cv.wait(lock);
        caller_sleeping.store(false, std::memory_order_relaxed);
    }
};

thread_pool::thread_pool(int n_threads) : impl_(std::make_unique<impl>()) {
    impl_->n_threads = n_threads < 1 ? 1 : n_threads;
    impl_->workers.reserve(size_t(impl_->n_threads - 1));
    for (int t = 1; t < impl_->n_threads; ++t) {
        impl_->workers.emplace_back([this, t] { impl_->worker_loop(t); });
    }
}

thread_pool::~thread_pool() {
    impl_->stop.store(true, std::memory_order_release);
    impl_->publish();
    for (auto& w : impl_->workers) w.join();
}

int thread_pool::n_threads() const { return impl_->n_threads; }

void thread_pool::run(int64_t n_tasks, const std::function<void(int64_t task, int thread)>& fn) {
    if (n_tasks <= 0) return;
    impl& p = *impl_;
    if (p.n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
        return;
    }
    p.fn = &fn;
    p.n_tasks = n_tasks;
    p.next.store(0, std::memory_order_relaxed);
    p.pending.store(int(p.workers.size()), std::memory_order_relaxed);
    p.publish();  // seq_cst increment: releases the job fields written above
    p.work(0);
    p.wait_done();
    p.fn = nullptr;
}

}  // namespace kvs
