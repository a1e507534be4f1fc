// Matmul autotuning at load, shared by the model families (kernels/cpu/autotune.h): the cached
// result for this CPU, build and workload, else measured now — at level full the weight layouts
// first, then the work splits on the weights as they will be read — and written to the cache.
#pragma once

#include <functional>

#include "kernels/cpu/autotune.h"
#include "model/language_model.h"

namespace kvs {

// Lays the model's weights out for reading (repack at load, weight_repack.h); called exactly
// once, with the mode the tuning leaves (opts.repack).
using repack_fn = std::function<void(weight_repack)>;
// The model's matmul calls of one forward pass over its weights as they are now.
using workload_fn = std::function<cpu::tune_workload()>;

// With opts.tune off: repack(opts.repack) only. Otherwise sets the process's matmul tuning from
// the cache or by measuring the model's calls (workload() before and after repack), with
// opts.tune_threads threads (0: the hardware's), and reports what it did on stderr.
void tune_matmuls_at_load(const load_options& opts, const workload_fn& workload, const repack_fn& repack);

}  // namespace kvs
