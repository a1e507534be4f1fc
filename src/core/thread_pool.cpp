// Fork/join thread pool.
//
// Protocol (one job at a time, published by the owning thread):
//   run():   lock `ticket` at the new generation, write the job (fn, n_tasks, done = 0), then
//            publish `ticket` = (generation, 0):
//            the high 32 bits name the job, the low 32 bits are the next task to hand out.
//            Sleeping workers are woken through `work_cv`. The caller takes tasks itself and
//            returns once `done` reaches n_tasks.
//   worker:  wait until the generation differs from the last one it served (spin, then
//            sleep), then claim tasks with a compare-and-swap on `ticket` that succeeds only
//            while the ticket still names that generation; after each task, bump `done`.
// The caller never waits for a worker that took no task: on an oversubscribed machine a
// descheduled worker costs nothing, the caller simply runs every task itself (a pool of 2
// threads is then never slower than 1). A late worker cannot touch a finished job: its claim
// fails once the generation has moved on, and a job's fn is only called under a successful
// claim, i.e. while the owning run() is still waiting for that task.
//
// Sleeping without lost wake-ups uses the usual flag + mutex handshake in both directions:
// the sleeper announces itself (`n_sleeping` / `caller_sleeping`, seq_cst) before re-checking
// the condition under the mutex; the waker changes the condition (seq_cst) before reading the
// announcement. Sequential consistency guarantees at least one side sees the other, and the
// waker takes the mutex before notifying, so a sleeper between its check and its wait cannot
// miss the notification.
#include "core/thread_pool.h"

#include <algorithm>
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

    // The current job. fn and n_tasks are atomics because a late worker may read them while
    // the caller publishes the next job; it only uses them under a successful claim.
    std::atomic<const std::function<void(int64_t, int)>*> fn{nullptr};
    std::atomic<int64_t> n_tasks{0};
    alignas(64) std::atomic<uint64_t> ticket{0};  // (generation << 32) | next task
    alignas(64) std::atomic<int64_t> done{0};     // tasks finished in the current job
    std::atomic<bool> stop{false};

    std::mutex work_mutex;
    std::condition_variable work_cv;
    std::atomic<int> n_sleeping{0};

    std::mutex done_mutex;
    std::condition_variable done_cv;
    std::atomic<bool> caller_sleeping{false};

    static uint32_t gen_of(uint64_t t) { return uint32_t(t >> 32); }
    static constexpr uint32_t locked = 0xFFFFFFFFu;  // task field while a job is being written

    // Runs tasks of generation `gen` until none is left (or the job has changed). The job
    // fields are read after each unlocked ticket of `gen` is seen (so they are gen's or
    // newer), and a task is run only if the claim on that very ticket value succeeds (so
    // they were gen's: a newer job's fields are written only after the ticket moved on).
    void work(uint32_t gen, int thread) {
        for (;;) {
            uint64_t t = ticket.load(std::memory_order_acquire);
            if (gen_of(t) != gen) return;
            if (uint32_t(t) == locked) {  // the caller is mid-publish
                cpu_relax();
                continue;
            }
            const auto* f = fn.load(std::memory_order_acquire);
            const int64_t n = n_tasks.load(std::memory_order_acquire);
            if (int64_t(uint32_t(t)) >= n) return;
            if (!ticket.compare_exchange_strong(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
            (*f)(int64_t(uint32_t(t)), thread);
            if (done.fetch_add(1, std::memory_order_seq_cst) + 1 == n &&
                caller_sleeping.load(std::memory_order_seq_cst)) {
                std::lock_guard<std::mutex> lock(done_mutex);
                done_cv.notify_one();
            }
        }
    }

    void worker_loop(int thread) {
        uint32_t seen = 0;
        for (;;) {
            uint32_t g = seen;
            spin_until([&] { return (g = gen_of(ticket.load(std::memory_order_acquire))) != seen; });
            if (g == seen) {
                std::unique_lock<std::mutex> lock(work_mutex);
                n_sleeping.fetch_add(1, std::memory_order_seq_cst);
                while ((g = gen_of(ticket.load(std::memory_order_seq_cst))) == seen) work_cv.wait(lock);
                n_sleeping.fetch_sub(1, std::memory_order_relaxed);
            }
            seen = g;
            if (stop.load(std::memory_order_acquire)) return;
            work(g, thread);
        }
    }

    // Publishes a new generation with job (f, n) (none for the stop flag) to the workers.
    // The ticket is first locked (new generation, nothing to claim) and the job written after
    // that, with release stores: a worker that reads a job field of generation g (acquire) is
    // then guaranteed to see the ticket of g or later, so it can never claim a task of an
    // older generation with the newer job's fields.
    uint32_t publish(const std::function<void(int64_t, int)>* f, int64_t n) {
        const uint32_t g = gen_of(ticket.load(std::memory_order_relaxed)) + 1;
        ticket.store((uint64_t(g) << 32) | locked, std::memory_order_seq_cst);
        fn.store(f, std::memory_order_release);
        n_tasks.store(n, std::memory_order_release);
        done.store(0, std::memory_order_release);
        ticket.store(uint64_t(g) << 32, std::memory_order_seq_cst);
        if (n_sleeping.load(std::memory_order_seq_cst) > 0) {
            { std::lock_guard<std::mutex> lock(work_mutex); }
            work_cv.notify_all();
        }
        return g;
    }

    void wait_done(int64_t n) {
        if (spin_until([&] { return done.load(std::memory_order_acquire) == n; })) return;
        std::unique_lock<std::mutex> lock(done_mutex);
        caller_sleeping.store(true, std::memory_order_seq_cst);
        while (done.load(std::memory_order_seq_cst) != n) done_cv.wait(lock);
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
    impl_->publish(nullptr, 0);
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
    constexpr int64_t max_tasks = int64_t(1) << 31;  // the ticket's task field is 32 bits
    if (n_tasks > max_tasks) {
        for (int64_t base = 0; base < n_tasks; base += max_tasks) {
            const std::function<void(int64_t, int)> part = [&](int64_t t, int th) { fn(base + t, th); };
            run(std::min(max_tasks, n_tasks - base), part);
        }
        return;
    }
    const uint32_t g = p.publish(&fn, n_tasks);
    p.work(g, 0);
    p.wait_done(n_tasks);
}

}  // namespace kvs
