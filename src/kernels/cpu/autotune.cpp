// Matmul autotuning: the search (autotune, autotune_layouts) and the cache file. See autotune.h.
#include "kernels/cpu/autotune.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "core/status.h"
#include "kernels/cpu/interleave.h"
#include "kernels/cpu/isa.h"

#ifndef KVSERVE_KERNEL_HASH  // set by CMake from the kernel sources (CMakeLists.txt)
#define KVSERVE_KERNEL_HASH "unhashed " __DATE__ " " __TIME__
#endif
#ifndef KVSERVE_VERSION_STRING
#define KVSERVE_VERSION_STRING "unknown"
#endif

namespace kvs::cpu {

namespace {

using clock_type = std::chrono::steady_clock;

// Decode-sized runs stream at most this many bytes of weights: well past any last-level
// cache, so they are timed at memory speed as decode runs.
constexpr size_t stream_cap_bytes = size_t(256) << 20;
// A setting replaces the defaults only if it is this much faster (the noise floor of a
// shared machine; smaller gains are not worth a wrong pick).
constexpr double win_margin = 0.03;

bool is_half(dtype t) { return t == dtype::f16 || t == dtype::bf16; }

size_t weight_bytes(const weight_view& w) { return size_t(w.n_out) * dtype_row_bytes(w.type, w.n_in); }

size_t call_bytes(const tune_call& c) {
    size_t n = 0;
    for (const weight_view& w : c.w) n += weight_bytes(w);
    return n;
}

std::string call_signature(const tune_call& c) {
    static const char* kinds[] = {"single", "multi", "swiglu"};
    std::string s = kinds[int(c.k)];
    if (c.head) s += "/head";
    if (c.max_m > 0) s += strfmt("/m<=%lld", (long long)c.max_m);
    for (const weight_view& w : c.w)
        s += strfmt(" %s:%lldx%lld%s", dtype_name(w.type), (long long)w.n_out, (long long)w.n_in,
                    w.layout == weight_layout::interleaved16 ? "i" : "");
    return s;
}

// A call of the workload as one class times it, weighted by how often the pass makes it.
struct timed_call {
    const tune_call* call;
    double weight;
};

// The runs of dtype t's calls for class c (see autotune.h): decode-sized classes stream the
// calls in order up to stream_cap_bytes; large m times each distinct call (the head aside).
std::vector<timed_call> plan_for(const tune_workload& w, dtype t, matmul_m_class c) {
    std::vector<timed_call> plan;
    if (c == matmul_m_class::large) {
        std::map<std::string, size_t> seen;
        for (const tune_call& call : w) {
            if (call.w.empty() || call.w[0].type != t || call.head) continue;
            auto [it, fresh] = seen.emplace(call_signature(call), plan.size());
            if (fresh) plan.push_back({&call, 1.0});
            else plan[it->second].weight += 1.0;
        }
        return plan;
    }
    size_t bytes = 0;
    for (const tune_call& call : w) {
        if (call.w.empty() || call.w[0].type != t || bytes >= stream_cap_bytes) continue;
        plan.push_back({&call, 1.0});
        bytes += call_bytes(call);
    }
    return plan;
}

// Activations and outputs for replaying calls: x random in [-1, 1], outputs scratch.
class runner {
public:
    runner(const tune_workload& w, thread_pool& pool) : pool_(pool) {
        int64_t n_in = 0;
        size_t y_elems = 0;
        for (const tune_call& c : w) {
            if (c.w.empty()) continue;
            const int64_t m = c.head ? tune_m_of[int(matmul_m_class::small)] : tune_m_of[int(matmul_m_class::large)];
            n_in = std::max(n_in, c.w[0].n_in);
            int64_t rows = 0;
            for (const weight_view& v : c.w) rows += v.n_out;
            y_elems = std::max(y_elems, size_t(m * rows));
        }
        x_.resize(size_t(tune_m_of[int(matmul_m_class::large)] * n_in));
        uint64_t s = 0x9e3779b97f4a7c15ull;
        for (float& v : x_) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            v = float(int64_t(s >> 40) - (int64_t(1) << 23)) / float(1 << 23);
        }
        y_.resize(std::max<size_t>(1, y_elems));
    }

    void run(const tune_call& c, int64_t m, const matmul_tuning& t) {
        switch (c.k) {
            case tune_call::kind::single: matmul(c.w[0], x_.data(), m, y_.data(), pool_, &t); break;
            case tune_call::kind::multi: {
                float* ys[8] = {};
                size_t off = 0;
                const int n = int(std::min<size_t>(8, c.w.size()));
                for (int j = 0; j < n; ++j) {
                    ys[j] = y_.data() + off;
                    off += size_t(m * c.w[size_t(j)].n_out);
                }
                matmul_multi(c.w.data(), n, x_.data(), m, ys, pool_, &t);
                break;
            }
            case tune_call::kind::swiglu:
                matmul_swiglu(c.w[0], c.w[1], x_.data(), m, y_.data(), nullptr, y_.data(), pool_, &t);  // as the forward pass calls it
                break;
        }
    }

    // Seconds of one run of the plan (large m: each call timed, weighted).
    double run_plan(const std::vector<timed_call>& plan, int64_t m, const matmul_tuning& t) {
        double total = 0;
        for (const timed_call& tc : plan) {
            const int64_t rows = tc.call->max_m > 0 ? std::min(m, tc.call->max_m) : m;
            const auto t0 = clock_type::now();
            run(*tc.call, rows, t);
            total += tc.weight * double(m) / double(rows) * std::chrono::duration<double>(clock_type::now() - t0).count();
        }
        return total;
    }

private:
    thread_pool& pool_;
    std::vector<float> x_;   // (512, max n_in)
    std::vector<float> y_;   // outputs of the largest call: (m, sum of its n_out)
};

// What one (dtype, class) search may spend: its share of the budget.
struct share {
    tune_budget* budget;
    int max_evaluations;  // in this search
    double max_seconds;
    int evaluations = 0;
    clock_type::time_point start = clock_type::now();
    double elapsed() const { return std::chrono::duration<double>(clock_type::now() - start).count(); }
    // A run may start: the global budget and this share both have room (`reserve` runs and
    // `reserve_frac` of the time are kept back for the confirmation).
    bool allows(int reserve = 0, double reserve_frac = 0) const {
        return !budget->spent() && evaluations + reserve < max_evaluations &&
               elapsed() < max_seconds * (1 - reserve_frac);
    }
};

// Runs one timed evaluation and charges it to the budget.
double timed_run(runner& r, const std::vector<timed_call>& plan, int64_t m, const matmul_tuning& t, share& sh) {
    const auto t0 = clock_type::now();
    const double secs = r.run_plan(plan, m, t);
    sh.budget->evaluations += 1;
    sh.budget->seconds += std::chrono::duration<double>(clock_type::now() - t0).count();
    sh.evaluations += 1;
    return secs;
}

struct measured {
    matmul_tuning tuning;
    double best = std::numeric_limits<double>::infinity();
};

tune_choice search(runner& r, const std::vector<timed_call>& plan, dtype t, matmul_m_class c, tune_level level,
                   share& sh, const tune_trace& trace) {
    const tune_space space = tune_space_for(t, c, level);
    const int64_t m = tune_m_of[int(c)];
    const int reps = level == tune_level::full ? 3 : 2;
    const int confirm_rounds = level == tune_level::full ? 6 : 4;
    const int reserve = 2 * confirm_rounds;
    const matmul_tuning def{};
    std::vector<measured> memo;
    auto entry = [&](const matmul_tuning& tn) -> measured& {
        for (measured& e : memo)
            if (e.tuning == tn) return e;
        memo.push_back({tn});
        return memo.back();
    };
    auto measure = [&](const matmul_tuning& tn, int n, int keep_back, double keep_frac) {
        for (int i = 0; i < n && sh.allows(keep_back, keep_frac); ++i) {
            const double secs = timed_run(r, plan, m, tn, sh);
            measured& e = entry(tn);
            e.best = std::min(e.best, secs);
            if (trace) trace({t, c, tn, weight_layout::row_major, secs});
        }
    };
    tune_choice out{t, c, def};
    if (plan.empty()) return out;
    // Warm-up (pages, caches, threads), then the defaults.
    if (sh.allows()) {
        const double secs = timed_run(r, plan, m, def, sh);
        if (trace) trace({t, c, def, weight_layout::row_major, secs});
    }
    measure(def, reps, reserve, 0.25);
    // Coordinate descent: one knob at a time, the others at the best so far.
    matmul_tuning cur = def;
    auto best_of_memo = [&]() {
        const measured* b = nullptr;
        for (const measured& e : memo)
            if (!b || e.best < b->best) b = &e;
        return b ? b->tuning : def;
    };
    const int passes = level == tune_level::full ? 2 : 1;
    for (int pass = 0; pass < passes; ++pass) {
        for (int knob = 0; knob < 4; ++knob) {
            const size_t n_values = knob == 0   ? space.l2_kib.size()
                                    : knob == 1 ? space.tasks_per_thread.size()
                                    : knob == 2 ? space.m_block.size()
                                                : space.bf16_dot.size();
            for (size_t i = 0; i < n_values && n_values > 1; ++i) {
                matmul_tuning cand = cur;
                if (knob == 0) cand.l2_kib = space.l2_kib[i];
                if (knob == 1) cand.tasks_per_thread = space.tasks_per_thread[i];
                if (knob == 2) cand.m_block = space.m_block[i];
                if (knob == 3) cand.bf16_dot = space.bf16_dot[i];
                if (cand == cur || entry(cand).best < std::numeric_limits<double>::infinity()) continue;
                measure(cand, reps, reserve, 0.25);
            }
            cur = best_of_memo();
        }
    }
    // Confirm against the defaults in fresh pairs of runs, back to back (a shared machine
    // drifts), deciding on these pairs only: the descent's best is biased by its own luck.
    std::vector<double> ratios;  // (winner's time / default's time) per pair
    double t_def = entry(def).best, t_cur = std::numeric_limits<double>::infinity();
    if (!(cur == def)) {
        for (int round = 0; round < confirm_rounds && sh.allows(1); ++round) {
            const double a = timed_run(r, plan, m, def, sh);
            if (trace) trace({t, c, def, weight_layout::row_major, a});
            if (!sh.allows()) break;
            const double b = timed_run(r, plan, m, cur, sh);
            if (trace) trace({t, c, cur, weight_layout::row_major, b});
            ratios.push_back(b / a);
            t_def = std::min(t_def, a);
            t_cur = std::min(t_cur, b);
        }
    }
    out.default_seconds = std::isfinite(t_def) ? t_def : 0;
    out.chosen_seconds = out.default_seconds;
    if (!ratios.empty()) {
        std::sort(ratios.begin(), ratios.end());
        const size_t n = ratios.size();
        const double median = n % 2 ? ratios[n / 2] : (ratios[n / 2 - 1] + ratios[n / 2]) / 2;
        if (median < 1 - win_margin) {
            out.tuning = cur;
            out.chosen_seconds = t_cur;
        }
    }
    return out;
}

// Weights of a class's share of the remaining time: prompt-sized runs cost the most.
constexpr double class_weight[matmul_n_m_classes] = {1, 1, 4};

}  // namespace

tune_space tune_space_for(dtype t, matmul_m_class c, tune_level level) {
    const matmul_tuning def{};
    tune_space s{{def.m_block}, {def.tasks_per_thread}, {def.l2_kib}, {def.bf16_dot}};
    if (level == tune_level::off) return s;
    const bool full = level == tune_level::full;
    s.tasks_per_thread = full ? std::vector<int32_t>{1, 2, 4, 6, 8, 12, 16, 32} : std::vector<int32_t>{2, 4, 8, 16};
    if (c == matmul_m_class::large) {
        s.m_block = full ? std::vector<int32_t>{32, 48, 64, 96, 128, 256} : std::vector<int32_t>{32, 64, 128};
        s.l2_kib = full ? std::vector<int32_t>{128, 256, 384, 512, 768, 1024, 1536, 2048, 0}
                        : std::vector<int32_t>{256, 512, 1024, 0};
        if (!full) s.tasks_per_thread = {4, 8, 16};
    }
    if (c != matmul_m_class::gemv && is_half(t) && detail::active_bf16dot_kernels()) s.bf16_dot = {true, false};
    return s;
}

tune_budget tune_budget_for(tune_level level) {
    tune_budget b;
    if (level == tune_level::fast) {
        b.max_evaluations = 400;
        b.max_seconds = 5;
    } else if (level == tune_level::full) {
        b.max_evaluations = 4000;
        b.max_seconds = 60;
    }
    return b;
}

std::vector<dtype> tune_dtypes(const tune_workload& w) {
    std::vector<dtype> out;
    for (const tune_call& c : w)
        if (!c.w.empty() && std::find(out.begin(), out.end(), c.w[0].type) == out.end()) out.push_back(c.w[0].type);
    std::sort(out.begin(), out.end(), [](dtype a, dtype b) { return uint32_t(a) < uint32_t(b); });
    return out;
}

tune_result autotune(const tune_workload& w, thread_pool& pool, tune_level level, const matmul_tuning_table& base,
                     tune_budget& budget, const tune_trace& trace) {
    tune_result res{base, tune_dtypes(w), {}};
    if (level == tune_level::off) return res;
    for (dtype t : res.dtypes)
        for (matmul_tuning& e : res.table.entry[uint32_t(t) % dtype_id_limit]) e = matmul_tuning{};
    runner r(w, pool);
    // Decode-sized classes first (cheap), so what they leave of the time goes to prompt runs.
    std::vector<std::pair<dtype, matmul_m_class>> jobs;
    for (matmul_m_class c : {matmul_m_class::gemv, matmul_m_class::small, matmul_m_class::large})
        for (dtype t : res.dtypes) jobs.push_back({t, c});
    const auto start = clock_type::now();
    const double seconds0 = budget.seconds;
    for (size_t j = 0; j < jobs.size(); ++j) {
        const auto [t, c] = jobs[j];
        double weight_left = 0;
        for (size_t k = j; k < jobs.size(); ++k) weight_left += class_weight[int(jobs[k].second)];
        const double frac = class_weight[int(c)] / weight_left;
        // Time spent outside runs (planning, clocks) counts too.
        budget.seconds = std::max(budget.seconds, seconds0 + std::chrono::duration<double>(clock_type::now() - start).count());
        share sh{&budget, int(double(budget.max_evaluations - budget.evaluations) * frac),
                 (budget.max_seconds - budget.seconds) * frac};
        const std::vector<timed_call> plan = plan_for(w, t, c);
        tune_choice ch = search(r, plan, t, c, level, sh, trace);
        res.table.at(t, c) = ch.tuning;
        res.choices.push_back(ch);
    }
    budget.seconds = std::max(budget.seconds, seconds0 + std::chrono::duration<double>(clock_type::now() - start).count());
    return res;
}

namespace {

struct free_deleter {
    void operator()(void* p) const { std::free(p); }
};

// Interleaved16 copies of the weights of some calls, and the calls rewritten to read them.
struct relaid {
    std::unique_ptr<uint8_t, free_deleter> mem;
    std::vector<tune_call> calls;  // parallel to the source list
};

relaid interleave_calls(const std::vector<const tune_call*>& src, thread_pool& pool) {
    relaid out;
    std::map<const void*, size_t> offset;  // source weight bytes -> offset of their copy
    std::vector<const weight_view*> views;
    size_t total = 0;
    for (const tune_call* c : src)
        for (const weight_view& v : c->w)
            if (can_interleave(v) && offset.emplace(v.data, total).second) {
                views.push_back(&v);
                total += (interleaved_bytes(v) + 63) / 64 * 64;
            }
    if (total > 0) {
        constexpr size_t align = size_t(2) << 20;  // as the loader: 2 MiB pages where the OS gives them
        total = (total + align - 1) / align * align;
        out.mem.reset(static_cast<uint8_t*>(std::aligned_alloc(align, total)));
        if (!out.mem) return out;
#if defined(MADV_HUGEPAGE)
        madvise(out.mem.get(), total, MADV_HUGEPAGE);
#endif
        struct job {
            const weight_view* v;
            int64_t row0, row1;
        };
        std::vector<job> jobs;
        for (const weight_view* v : views)
            for (int64_t r = 0; r < v->n_out; r += 256) jobs.push_back({v, r, std::min(v->n_out, r + 256)});
        pool.run(int64_t(jobs.size()), [&](int64_t j, int) {
            const job& jb = jobs[size_t(j)];
            interleave(*jb.v, out.mem.get() + offset[jb.v->data], jb.row0, jb.row1);
        });
    }
    for (const tune_call* c : src) {
        tune_call copy = *c;
        for (weight_view& v : copy.w)
            if (out.mem && can_interleave(v)) {
                const size_t off = offset[v.data];
                v.data = out.mem.get() + off;
                v.layout = weight_layout::interleaved16;
            }
        out.calls.push_back(std::move(copy));
    }
    return out;
}

}  // namespace

void autotune_layouts(const tune_workload& row_major, thread_pool& pool, matmul_tuning_table* table,
                      tune_budget& budget, const tune_trace& trace) {
    const std::vector<dtype> dtypes = tune_dtypes(row_major);
    const auto start = clock_type::now();
    const double seconds0 = budget.seconds;
    runner r(row_major, pool);
    const matmul_tuning def{};
    for (size_t di = 0; di < dtypes.size(); ++di) {
        const dtype t = dtypes[di];
        const std::vector<timed_call> plans[2] = {plan_for(row_major, t, matmul_m_class::gemv),
                                                  plan_for(row_major, t, matmul_m_class::large)};
        std::vector<const tune_call*> src;
        for (const auto& plan : plans)
            for (const timed_call& tc : plan)
                if (std::find(src.begin(), src.end(), tc.call) == src.end()) src.push_back(tc.call);
        bool any = false;
        for (const tune_call* c : src)
            for (const weight_view& v : c->w) any = any || (v.type == t && can_interleave(v));
        if (!any || budget.spent()) continue;
        budget.seconds = std::max(budget.seconds, seconds0 + std::chrono::duration<double>(clock_type::now() - start).count());
        // This dtype's share: a third of what is left per remaining dtype (the rest is for autotune).
        share sh{&budget, (budget.max_evaluations - budget.evaluations) / int(3 * (dtypes.size() - di)),
                 (budget.max_seconds - budget.seconds) / double(3 * (dtypes.size() - di))};
        relaid il = interleave_calls(src, pool);
        if (!il.mem) continue;
        double ratio_log = 0;  // sum over the measured classes of log(row-major time / interleaved time)
        int n_classes = 0;
        bool measured_all = true;
        for (int p = 0; p < 2; ++p) {
            std::vector<timed_call> alt;
            for (const timed_call& tc : plans[p]) {
                const size_t k = size_t(std::find(src.begin(), src.end(), tc.call) - src.begin());
                alt.push_back({&il.calls[k], tc.weight});
            }
            const matmul_m_class c = p == 0 ? matmul_m_class::gemv : matmul_m_class::large;
            const int64_t m = tune_m_of[int(c)];
            double best[2] = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity()};
            // Warm-up each, then alternate.
            for (int round = 0; round < 4; ++round)
                for (int layout = 0; layout < 2 && sh.allows(); ++layout) {
                    const double secs = timed_run(r, layout == 0 ? plans[p] : alt, m, def, sh);
                    if (round > 0) best[layout] = std::min(best[layout], secs);
                    if (trace) trace({t, c, def, layout == 0 ? weight_layout::row_major : weight_layout::interleaved16, secs});
                }
            if (plans[p].empty()) continue;  // e.g. a dtype only the head has: no prompt-sized runs
            if (!std::isfinite(best[0]) || !std::isfinite(best[1])) {
                measured_all = false;
                continue;
            }
            ratio_log += std::log(best[0] / best[1]);
            ++n_classes;
        }
        // Row-major only when it is faster overall (geometric mean over the classes).
        const bool row_major_wins =
            measured_all && n_classes > 0 && std::exp(ratio_log / n_classes) < 1 - win_margin;
        table->set_repack(t, !row_major_wins);
    }
    budget.seconds = std::max(budget.seconds, seconds0 + std::chrono::duration<double>(clock_type::now() - start).count());
}

// ---- the cache ----------------------------------------------------------------------------------

namespace {

uint64_t fnv1a(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char ch : s) {
        h ^= ch;
        h *= 1099511628211ull;
    }
    return h;
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\r' || s.back() == '\t' || s.back() == '\0'))
        s.pop_back();
    size_t i = 0;
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    return s.substr(i);
}

// One line per field; a field's value must not hold a newline.
std::string one_line(std::string s) {
    for (char& ch : s)
        if (ch == '\n' || ch == '\r') ch = ' ';
    return s;
}

constexpr const char* file_magic = "kvserve-matmul-tuning 1";

void warn_ignored(const std::string& path, const std::string& why) {
    std::fprintf(stderr, "kvserve: ignoring the matmul tuning file %s: %s (it will be replaced)\n", path.c_str(), why.c_str());
}

}  // namespace

std::string tune_cpu_name() {
    std::string name;
#if defined(__x86_64__) || defined(__i386__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u) {
        char brand[49] = {};
        for (unsigned leaf = 0; leaf < 3; ++leaf) {
            __get_cpuid(0x80000002u + leaf, &a, &b, &c, &d);
            std::memcpy(brand + 16 * leaf, &a, 4);
            std::memcpy(brand + 16 * leaf + 4, &b, 4);
            std::memcpy(brand + 16 * leaf + 8, &c, 4);
            std::memcpy(brand + 16 * leaf + 12, &d, 4);
        }
        name = trim(brand);
    }
    // Virtual machines often show a generic brand ("AMD EPYC"): add family, model, stepping.
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        const unsigned family = ((a >> 8) & 15) + (((a >> 8) & 15) == 15 ? (a >> 20) & 255 : 0);
        const unsigned model = ((a >> 4) & 15) | (((a >> 8) & 15) >= 6 ? ((a >> 16) & 15) << 4 : 0);
        name += strfmt(" (family %u model %u stepping %u)", family, model, a & 15);
    }
#endif
    if (name.empty()) {
        std::ifstream in("/proc/cpuinfo");
        std::string line;
        while (std::getline(in, line))
            if (line.rfind("model name", 0) == 0 || line.rfind("Model name", 0) == 0 || line.rfind("cpu model", 0) == 0) {
                const size_t colon = line.find(':');
                if (colon != std::string::npos) name = trim(line.substr(colon + 1));
                break;
            }
    }
    return one_line(name.empty() ? "unknown" : name);
}

std::string tune_isa_name() {
    std::string s = isa_name(isa_active());
    if (detail::active_bf16dot_kernels()) s += "+bf16dot";
    if (cpu_has_avx512_fp16()) s += "+fp16";
    if (interleave_preferred()) s += "+interleaved";
    return s;
}

std::string tune_build_id() {
    return one_line(std::string("kvserve ") + KVSERVE_VERSION_STRING + " kernels " + KVSERVE_KERNEL_HASH +
#if defined(__VERSION__)
                    " compiler " + __VERSION__
#else
                    ""
#endif
    );
}

tune_key tune_key_for(const tune_workload& w, int n_threads, tune_level level, const std::string& extra) {
    tune_key k;
    k.cpu = tune_cpu_name();
    k.isa = tune_isa_name();
    k.build = tune_build_id();
    std::map<std::string, int> calls;
    for (const tune_call& c : w) ++calls[call_signature(c)];
    std::string s = strfmt("threads %d level %s", n_threads, tune_level_name(level));
    if (!extra.empty()) s += " " + extra;
    for (const auto& [sig, n] : calls) s += strfmt("; %dx %s", n, sig.c_str());
    k.workload = one_line(s);
    return k;
}

std::string tune_cache_dir() {
    if (const char* e = std::getenv("KVSERVE_TUNE_CACHE"); e && *e) return e;
    if (const char* e = std::getenv("XDG_CACHE_HOME"); e && *e) return std::string(e) + "/kvserve";
    if (const char* e = std::getenv("HOME"); e && *e) return std::string(e) + "/.cache/kvserve";
    return "";
}

std::string tune_cache_path(const std::string& dir, const tune_key& key) {
    return dir + strfmt("/matmul-%016llx.txt", (unsigned long long)fnv1a(key.workload));
}

bool tune_cache_read(const std::string& path, const tune_key& key, matmul_tuning_table* table) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return false;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        warn_ignored(path, "cannot be read");
        return false;
    }
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.size() > (size_t(1) << 20)) {
        warn_ignored(path, "too large to be a tuning file");
        return false;
    }
    const size_t sum_at = text.rfind("checksum: ");
    if (text.rfind(file_magic, 0) != 0 || sum_at == std::string::npos) {
        warn_ignored(path, "not a tuning file, or truncated");
        return false;
    }
    const std::string body = text.substr(0, sum_at);
    if (trim(text.substr(sum_at + 10)) != strfmt("%016llx", (unsigned long long)fnv1a(body))) {
        warn_ignored(path, "corrupt (checksum mismatch)");
        return false;
    }
    std::istringstream lines(body);
    std::string line;
    std::getline(lines, line);  // the magic
    std::map<std::string, std::string> header;
    matmul_tuning_table parsed = *table;
    while (std::getline(lines, line)) {
        const size_t colon = line.find(": ");
        if (colon == std::string::npos) {
            warn_ignored(path, "corrupt (a line without a field name)");
            return false;
        }
        const std::string field = line.substr(0, colon), value = line.substr(colon + 2);
        if (field == "tune") {
            std::istringstream v(value);
            std::string dt, cls;
            long long mb = -1, tasks = -1, l2 = -1, bf = -1;
            dtype t{};
            int ci = -1;
            v >> dt >> cls >> mb >> tasks >> l2 >> bf;
            for (int c = 0; c < matmul_n_m_classes; ++c)
                if (cls == matmul_m_class_name(matmul_m_class(c))) ci = c;
            if (!v || !dtype_from_name(dt, &t) || ci < 0 || mb < 1 || mb > 65536 || tasks < 1 || tasks > 1024 ||
                l2 < 0 || l2 > (1 << 20) || (bf != 0 && bf != 1)) {
                warn_ignored(path, "corrupt (a bad tune line)");
                return false;
            }
            parsed.at(t, matmul_m_class(ci)) = matmul_tuning{int32_t(mb), int32_t(tasks), int32_t(l2), bf == 1};
        } else if (field == "repack") {
            std::istringstream v(value);
            std::string dt;
            int on = -1;
            dtype t{};
            v >> dt >> on;
            if (!v || !dtype_from_name(dt, &t) || (on != 0 && on != 1)) {
                warn_ignored(path, "corrupt (a bad repack line)");
                return false;
            }
            parsed.set_repack(t, on == 1);
        } else {
            header[field] = value;
        }
    }
    const std::pair<const char*, const std::string*> want[] = {
        {"cpu", &key.cpu}, {"isa", &key.isa}, {"build", &key.build}, {"workload", &key.workload}};
    for (const auto& [field, value] : want) {
        auto it = header.find(field);
        if (it == header.end()) {
            warn_ignored(path, std::string("corrupt (no ") + field + " line)");
            return false;
        }
        if (it->second != *value) {
            warn_ignored(path, std::string("written for another ") + field + " (" + it->second + ")");
            return false;
        }
    }
    *table = parsed;
    return true;
}

bool tune_cache_write(const std::string& path, const tune_key& key, const matmul_tuning_table& table,
                      const std::vector<dtype>& dtypes) {
    std::string body = std::string(file_magic) + "\n";
    body += "cpu: " + one_line(key.cpu) + "\n";
    body += "isa: " + one_line(key.isa) + "\n";
    body += "build: " + one_line(key.build) + "\n";
    body += "workload: " + one_line(key.workload) + "\n";
    for (dtype t : dtypes) {
        for (int c = 0; c < matmul_n_m_classes; ++c) {
            const matmul_tuning& e = table.at(t, matmul_m_class(c));
            body += strfmt("tune: %s %s %d %d %d %d\n", dtype_name(t), matmul_m_class_name(matmul_m_class(c)), e.m_block,
                           e.tasks_per_thread, e.l2_kib, e.bf16_dot ? 1 : 0);
        }
        body += strfmt("repack: %s %d\n", dtype_name(t), table.repack_of(t) ? 1 : 0);
    }
    const std::string text = body + strfmt("checksum: %016llx\n", (unsigned long long)fnv1a(body));
    std::error_code ec;
    const std::filesystem::path p(path);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
    const std::string tmp = path + strfmt(".tmp%ld", (long)getpid());
    bool ok = false;
    if (FILE* f = std::fopen(tmp.c_str(), "wb")) {
        ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
        ok = std::fclose(f) == 0 && ok;
    }
    if (ok) {
        std::filesystem::rename(tmp, path, ec);
        ok = !ec;
    }
    if (!ok) {
        std::filesystem::remove(tmp, ec);
        std::fprintf(stderr, "kvserve: cannot write the matmul tuning file %s\n", path.c_str());
    }
    return ok;
}

std::string tune_describe(const matmul_tuning& t) {
    return strfmt("m_block %d, tasks/thread %d, l2 %s, bf16 dot %s", t.m_block, t.tasks_per_thread,
                  t.l2_kib > 0 ? strfmt("%d KiB", t.l2_kib).c_str() : "unlimited", t.bf16_dot ? "on" : "off");
}

}  // namespace kvs::cpu
