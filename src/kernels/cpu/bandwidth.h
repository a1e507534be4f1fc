// Memory-bandwidth probe: the rate at which the pool's threads can stream-read a buffer much
// larger than the caches. Single-stream decode reads every weight once per token, so this is
// its ceiling; `kvserve bench` and bench/bench_kernels report decode as a fraction of it.
#pragma once

#include <cstddef>

#include "core/thread_pool.h"

namespace kvs::cpu {

// Best of `reps` timed passes over a `bytes`-sized buffer (allocated and touched first), GB/s.
double measure_read_bandwidth(thread_pool& pool, size_t bytes = size_t(512) << 20, int reps = 5);

}  // namespace kvs::cpu
