// A persistent pool of worker threads with low-overhead fork/join: `run(n_tasks, fn)` calls
// fn(task, thread) for every task in [0, n_tasks) spread over the pool's threads (the caller
// is thread 0 and works too) and returns when all are done. Workers spin briefly between
// jobs, then sleep. Not re-entrant: only one `run` at a time, from one owning thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace kvs {

class thread_pool {
public:
    explicit thread_pool(int n_threads);  // n_threads >= 1 (includes the caller)
    ~thread_pool();
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;

    int n_threads() const;
    // Tasks are handed out dynamically (atomic counter), so uneven tasks balance.
    void run(int64_t n_tasks, const std::function<void(int64_t task, int thread)>& fn);

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace kvs
