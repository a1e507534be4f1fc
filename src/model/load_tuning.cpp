#include "model/load_tuning.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "core/thread_pool.h"
#include "kernels/cpu/interleave.h"

namespace kvs {

namespace {

const char* repack_name(weight_repack r) {
    switch (r) {
        case weight_repack::automatic: return "automatic";
        case weight_repack::never: return "never";
        case weight_repack::always: return "always";
    }
    return "?";
}

}  // namespace

void tune_matmuls_at_load(const load_options& opts, const workload_fn& workload, const repack_fn& repack) {
    if (opts.tune == cpu::tune_level::off) {
        repack(opts.repack);
        return;
    }
    const int n_threads = opts.tune_threads > 0 ? opts.tune_threads : int(std::max(1u, std::thread::hardware_concurrency()));
    thread_pool pool(n_threads);
    const cpu::tune_workload file_layout = workload();
    const cpu::tune_key key = cpu::tune_key_for(file_layout, n_threads, opts.tune, std::string("repack ") + repack_name(opts.repack));
    const std::string dir = cpu::tune_cache_dir();
    const std::string path = dir.empty() ? std::string() : cpu::tune_cache_path(dir, key);
    const char* level = cpu::tune_level_name(opts.tune);
    cpu::matmul_tuning_table table = cpu::matmul_tuning_active();
    if (!path.empty() && cpu::tune_cache_read(path, key, &table)) {
        cpu::matmul_tuning_set(table);
        repack(opts.repack);
        std::fprintf(stderr, "matmul tuning (%s): read %s\n", level, path.c_str());
        return;
    }
    cpu::tune_budget budget = cpu::tune_budget_for(opts.tune);
    const std::vector<dtype> dtypes = cpu::tune_dtypes(file_layout);
    for (dtype t : dtypes) table.set_repack(t, true);
    // KVSERVE_TUNE_TRACE=1 prints every timed run.
    cpu::tune_trace trace;
    if (const char* e = std::getenv("KVSERVE_TUNE_TRACE"); e && *e && std::string(e) != "0")
        trace = [](const cpu::tune_trial& t) {
            std::fprintf(stderr, "matmul tuning: %-5s %-5s %-13s %s: %.3f ms\n", dtype_name(t.type), cpu::matmul_m_class_name(t.m_class),
                         t.layout == cpu::weight_layout::interleaved16 ? "interleaved16" : "", cpu::tune_describe(t.tuning).c_str(),
                         t.seconds * 1e3);
        };
    if (opts.tune == cpu::tune_level::full && opts.repack == weight_repack::automatic && cpu::interleave_preferred())
        cpu::autotune_layouts(file_layout, pool, &table, budget, trace);
    cpu::matmul_tuning_set(table);
    repack(opts.repack);
    const cpu::tune_result tuned = cpu::autotune(workload(), pool, opts.tune, table, budget, trace);
    cpu::matmul_tuning_set(tuned.table);
    const bool saved = !path.empty() && cpu::tune_cache_write(path, key, tuned.table, dtypes);
    std::fprintf(stderr, "matmul tuning (%s): %d runs in %.1f s%s%s\n", level, budget.evaluations, budget.seconds, saved ? ", saved to " : "",
                 saved ? path.c_str() : "");
}

}  // namespace kvs
