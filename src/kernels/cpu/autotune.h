// Matmul autotuning (FasterTransformer's gemm_test, done at load time): for the matmul calls
// of a model's forward pass, time candidate matmul_tuning settings (ops.h) on the running CPU
// for decode (m = 1), a small batch (m = 8) and a prompt chunk (m = 512), keep the fastest per
// weight dtype and m class, and cache the result in a file keyed by the CPU, its ISA, the
// kvserve build and the workload.
//
// Search. Per (dtype, m class) a coordinate descent from the defaults: each knob's values are
// timed with the other knobs at the best so far (the minimum over repetitions), then the
// winner is confirmed against the defaults in fresh back-to-back pairs of runs and kept only
// if the median of its time ratios beats them by a margin (3%), so that a noisy machine falls
// back to the defaults rather than to a lucky sample.
// Decode-sized runs stream the dtype's calls in forward order over up to 256 MiB of weights
// (so they come from memory, as in decode, not from the last-level cache); prompt-sized runs
// time each distinct call once, weighted by how often the pass makes it. At level full the
// weight layout is chosen first (autotune_layouts): row_major against interleaved16 copies.
//
// Contract
//  - The tuner only picks values from tune_space_for (tested: each gives the default's results,
//    bit for bit for the work-split knobs, within the kernel tolerances for bf16_dot).
//  - It never starts a run past its budget: tune_budget counts runs (warm-ups included) and
//    wall time; what was not measured keeps the defaults.
//  - A cache file that is unreadable, corrupt, or written for another CPU, ISA, build or
//    workload is ignored with a warning on stderr; the caller tunes and replaces it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"

namespace kvs::cpu {

// One matmul call of a forward pass, as the tuner replays it.
struct tune_call {
    enum class kind : uint8_t { single, multi, swiglu };
    kind k = kind::single;
    std::vector<weight_view> w;  // 1 (single), 1..8 (multi, equal n_in), 2 (swiglu: gate, up)
    bool head = false;           // the LM head: run for logit rows only, so not timed at large m
    int64_t max_m = 0;           // most x rows the pass gives one call (0: any); a prompt-sized run
                                 // of more rows times it at max_m rows, weighted by the calls it takes
};

// The matmul calls of one forward pass, in order (every layer, then the head).
using tune_workload = std::vector<tune_call>;

// x rows each m class is timed with.
inline constexpr int64_t tune_m_of[matmul_n_m_classes] = {1, 8, 512};

// The values tried per knob for a (dtype, m class) at a level; the tuner returns one value of
// each (any combination of them). A knob that does not act in the class has one value, the
// default (m_block and l2_kib below 17 rows, bf16_dot for m = 1 and for dtypes other than
// f16/bf16 or without AVX512-BF16).
struct tune_space {
    std::vector<int32_t> m_block, tasks_per_thread, l2_kib;
    std::vector<bool> bf16_dot;
};
tune_space tune_space_for(dtype t, matmul_m_class c, tune_level level);

// What tuning may spend. The tuner adds to `evaluations` and `seconds` as it goes.
struct tune_budget {
    int max_evaluations = 0;  // timed workload runs in all, warm-ups included
    double max_seconds = 0;   // no run starts once this much time is spent
    int evaluations = 0;      // runs so far
    double seconds = 0;       // time spent so far (in runs and in preparing them)
    bool spent() const { return evaluations >= max_evaluations || seconds >= max_seconds; }
};
// fast: about a few seconds for a 1.1B model; full: about a minute.
tune_budget tune_budget_for(tune_level level);

// One run, as reported to a trace callback (tests count them; verbose tools print them).
struct tune_trial {
    dtype type;
    matmul_m_class m_class;
    matmul_tuning tuning;
    weight_layout layout;  // autotune_layouts: the layout timed
    double seconds;        // the run's time (large m: the weighted sum of its calls)
};
using tune_trace = std::function<void(const tune_trial&)>;

// The outcome for one (dtype, m class).
struct tune_choice {
    dtype type;
    matmul_m_class m_class;
    matmul_tuning tuning;        // chosen (the default when nothing beat it)
    double default_seconds = 0;  // best time of the default and of the choice (0: not measured)
    double chosen_seconds = 0;
};

struct tune_result {
    matmul_tuning_table table;   // `base` with the entries of the workload's dtypes tuned
    std::vector<dtype> dtypes;   // those dtypes (the first weight of some call), ascending
    std::vector<tune_choice> choices;
};

// The dtypes that lead some call of the workload (whose tuning the calls read), ascending.
std::vector<dtype> tune_dtypes(const tune_workload& w);

// Tunes the work split and variants of every dtype in tune_dtypes(w), for the pool's thread
// count, starting from the defaults. Entries of other dtypes and the repack flags are those
// of `base`. Level off returns `base` untouched.
tune_result autotune(const tune_workload& w, thread_pool& pool, tune_level level, const matmul_tuning_table& base,
                     tune_budget& budget, const tune_trace& trace = nullptr);

// Level full, before repacking: for each dtype of `row_major` (a workload still in the file
// layout) that can be repacked, times its calls on interleaved16 copies against the row-major
// weights with the default tuning, and sets table->repack for it (interleaved16 unless
// row_major is faster by a margin at m = 1 and 512 taken together).
void autotune_layouts(const tune_workload& row_major, thread_pool& pool, matmul_tuning_table* table,
                      tune_budget& budget, const tune_trace& trace = nullptr);

// ---- the cache ----------------------------------------------------------------------------------

// Where a tuning is valid: all four must match for a cached file to be used.
struct tune_key {
    std::string cpu;       // the CPU model (CPUID brand string, else /proc/cpuinfo)
    std::string isa;       // the active kernel ISA and the CPU features the kernels use
    std::string build;     // kvserve build: version, hash of the kernel sources, compiler
    std::string workload;  // thread count, level, and every distinct call's weights (dtype, shape, layout)
};
std::string tune_cpu_name();
std::string tune_isa_name();
std::string tune_build_id();
// The key of tuning `w` on this CPU and build with n_threads at `level`; `extra` is appended
// to the workload part (the loader's repack mode).
tune_key tune_key_for(const tune_workload& w, int n_threads, tune_level level, const std::string& extra = "");

// $KVSERVE_TUNE_CACHE, else $XDG_CACHE_HOME/kvserve, else $HOME/.cache/kvserve ("" when none
// is set).
std::string tune_cache_dir();
// <dir>/matmul-<hash of key.workload>.txt: one file per model shape, thread count and level.
std::string tune_cache_path(const std::string& dir, const tune_key& key);

// Reads a cache file into *table (the entries and repack flags of the dtypes it lists; the
// rest untouched). False when it is absent (silently) or corrupt, or written for another key
// (with a warning on stderr naming the file and why).
bool tune_cache_read(const std::string& path, const tune_key& key, matmul_tuning_table* table);
// Writes the entries and repack flags of `dtypes` (atomically: a temporary file renamed over
// the old one; creates the directory). False, with a warning on stderr, on failure.
bool tune_cache_write(const std::string& path, const tune_key& key, const matmul_tuning_table& table,
                      const std::vector<dtype>& dtypes);

// "m_block 64, tasks/thread 8, l2 512 KiB, bf16 dot on" for messages.
std::string tune_describe(const matmul_tuning& t);

}  // namespace kvs::cpu
