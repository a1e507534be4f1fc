// Matmul autotuning (kernels/cpu/autotune.h): every setting the tuner can pick gives the
// default's results (bit for bit for the work-split knobs, within the kernel tolerances for
// bf16 dot products), the cache file round-trips and a corrupt or foreign one is ignored and
// replaced, and the tuner stays within its budget (counted in runs, never in wall time).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/cpu/autotune.h"
#include "kernels/cpu/interleave.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"
#include "model/llama.h"
#include "test_util.h"

namespace kvs::cpu {
namespace {

std::vector<isa> supported_isas() {
    std::vector<isa> out;
    for (isa i : {isa::scalar, isa::avx2, isa::avx512})
        if (isa_supported(i)) out.push_back(i);
    return out;
}

// Restores the default dispatch even when an assertion returns early.
struct isa_scope {
    explicit isa_scope(isa i) { isa_override(i); }
    ~isa_scope() { isa_reset(); }
};

// Restores the default matmul tuning.
struct tuning_scope {
    ~tuning_scope() { matmul_tuning_reset(); }
};

struct weights {
    std::vector<uint8_t> bytes;  // (n_out, row_bytes), or the interleaved16 copy
    weight_view view;
};

weights make_weights(dtype t, int64_t n_out, int64_t n_in, uint64_t seed) {
    weights w;
    std::vector<float> f = test::random_floats(n_out * n_in, seed, 0.5f);
    const size_t row_bytes = dtype_row_bytes(t, n_in);
    w.bytes.resize(size_t(n_out) * row_bytes);
    for (int64_t o = 0; o < n_out; ++o) {
        EXPECT_TRUE(quantize_row(t, f.data() + o * n_in, w.bytes.data() + size_t(o) * row_bytes, n_in));
    }
    w.view = {w.bytes.data(), t, n_out, n_in};
    return w;
}

weights interleaved_copy(const weights& w) {
    weights out;
    out.bytes.resize(interleaved_bytes(w.view));
    out.view = interleave(w.view, out.bytes.data(), 0, w.view.n_out);
    return out;
}

const dtype all_dtypes[] = {dtype::f32, dtype::f16, dtype::bf16, dtype::q8_0, dtype::q4_0,
                            dtype::q4_1, dtype::q4_k, dtype::q5_k, dtype::q6_k};

// test_kernels' tolerances against ref::matmul.
double tolerance(dtype t) {
    switch (t) {
        case dtype::f32: return 1e-6;
        case dtype::f16:
        case dtype::bf16: return 1e-5;
        default: return 1e-2;
    }
}

bool is_half(dtype t) { return t == dtype::f16 || t == dtype::bf16; }

// Every setting the tuner can return for (t, class): the cross product of the level-full
// space (the fast space is a subset), or each knob varied alone from the defaults.
std::vector<matmul_tuning> settings(dtype t, matmul_m_class c, bool cross) {
    const tune_space s = tune_space_for(t, c, tune_level::full);
    const tune_space fast = tune_space_for(t, c, tune_level::fast);
    auto subset = [](const auto& small, const auto& big) {
        for (auto v : small)
            if (std::find(big.begin(), big.end(), v) == big.end()) return false;
        return true;
    };
    EXPECT_TRUE(subset(fast.m_block, s.m_block) && subset(fast.tasks_per_thread, s.tasks_per_thread) &&
                subset(fast.l2_kib, s.l2_kib) && subset(fast.bf16_dot, s.bf16_dot));
    std::vector<matmul_tuning> out;
    if (cross) {
        for (int32_t mb : s.m_block)
            for (int32_t tp : s.tasks_per_thread)
                for (int32_t l2 : s.l2_kib)
                    for (bool bf : s.bf16_dot) out.push_back({mb, tp, l2, bf});
        return out;
    }
    const matmul_tuning def{};
    for (int32_t v : s.m_block) out.push_back({v, def.tasks_per_thread, def.l2_kib, def.bf16_dot});
    for (int32_t v : s.tasks_per_thread) out.push_back({def.m_block, v, def.l2_kib, def.bf16_dot});
    for (int32_t v : s.l2_kib) out.push_back({def.m_block, def.tasks_per_thread, v, def.bf16_dot});
    for (bool v : s.bf16_dot) out.push_back({def.m_block, def.tasks_per_thread, def.l2_kib, v});
    return out;
}

// Work splits far outside the tuner's range (one-row blocks, 16-row chunks, one task per
// thread): the partition of the output never changes a value.
std::vector<matmul_tuning> extreme_splits() {
    return {{1, 8, 512, true}, {7, 8, 512, true}, {17, 8, 512, true}, {64, 1, 512, true},
            {64, 64, 512, true}, {64, 8, 1, true}, {5, 3, 1, true}, {4096, 1024, 0, true}};
}

// y = x · wᵀ with the given tuning through matmul_multi (with a second weight) or matmul_swiglu
// (gate = up = w), so that all three entry points see every setting.
std::vector<float> run(const weight_view& w, const std::vector<float>& x, int64_t m, thread_pool& pool,
                       const matmul_tuning& t, int entry) {
    std::vector<float> y(size_t(m * w.n_out), -12345.0f);
    if (entry == 0) {
        matmul(w, x.data(), m, y.data(), pool, &t);
    } else if (entry == 1) {
        std::vector<float> y2(size_t(m * w.n_out));
        const weight_view ws[2] = {w, w};
        float* const ys[2] = {y.data(), y2.data()};
        matmul_multi(ws, 2, x.data(), m, ys, pool, &t);
        EXPECT_EQ(y, y2);
    } else {
        std::vector<float> gate(y.size()), up(y.size());
        matmul_swiglu(w, w, x.data(), m, gate.data(), up.data(), y.data(), pool, &t);
        EXPECT_EQ(gate, up);
        y = gate;  // x · wᵀ (the SwiGLU epilogue wrote y)
    }
    return y;
}

// Checks every setting against the default on one weight matrix; `cross` as settings().
void check_settings(const weight_view& w, const weight_view& row_major, bool cross, const std::string& what) {
    const dtype t = w.type;
    for (int64_t m : {1, 3, 64}) {
        const matmul_m_class c = matmul_m_class_of(m);
        std::vector<float> x = test::random_floats(m * w.n_in, 7 + uint64_t(m), 2.0f);
        std::vector<float> want(size_t(m * w.n_out));
        ref::matmul(row_major, x.data(), m, want.data());
        std::vector<matmul_tuning> cands = settings(t, c, cross);
        if (!cross) {
            for (const matmul_tuning& e : extreme_splits()) cands.push_back(e);
        }
        for (int n_threads : cross ? std::vector<int>{2} : std::vector<int>{1, 3}) {
            thread_pool pool(n_threads);
            const matmul_tuning def{};
            const std::vector<float> base = run(w, x, m, pool, def, 0);
            std::vector<float> no_bf16;  // the f32-math variant, with default splits
            for (size_t k = 0; k < cands.size(); ++k) {
                const matmul_tuning& cand = cands[k];
                const std::string where = what + " m " + std::to_string(m) + " threads " + std::to_string(n_threads) +
                                          " " + tune_describe(cand);
                const std::vector<float> y = run(w, x, m, pool, cand, int(k % 3));
                const bool same_math = cand.bf16_dot == def.bf16_dot || !is_half(t) || m == 1 ||
                                       !detail::active_bf16dot_kernels();
                if (same_math) {
                    ASSERT_EQ(y, base) << where;
                    continue;
                }
                // bf16 dot products off: the f32-math kernels, test_kernels' contract for them.
                EXPECT_LE(test::nmse_norm(y.data(), want.data(), m * w.n_out), tolerance(t)) << where;
                if (no_bf16.empty()) {
                    no_bf16 = y;
                } else {
                    ASSERT_EQ(y, no_bf16) << where << " (splits changed f32-math results)";
                }
            }
        }
    }
}

// The shapes: n_out 160 (ten 16-row groups, several chunks per thread), n_in 512 (whole k-quant
// super-blocks), and a wider one whose rows make the L2 budget cut chunks (f32 rows of 8 KiB).
TEST(AutotuneSettings, EveryCandidateGivesTheDefaultResultsOnEveryIsa) {
    for (dtype t : all_dtypes) {
        weights w = make_weights(t, 160, 512, 3 + uint64_t(t));
        for (isa i : supported_isas()) {
            isa_scope scope(i);
            check_settings(w.view, w.view, false, std::string(dtype_name(t)) + " row_major " + isa_name(i));
            if (can_interleave(w.view)) {
                weights p = interleaved_copy(w);
                check_settings(p.view, w.view, false, std::string(dtype_name(t)) + " interleaved16 " + isa_name(i));
            }
        }
    }
}

TEST(AutotuneSettings, EveryCombinationGivesTheDefaultResults) {
    for (dtype t : all_dtypes) {
        const int64_t n_in = t == dtype::f32 ? 2048 : 512;
        weights w = make_weights(t, 160, n_in, 5 + uint64_t(t));
        check_settings(w.view, w.view, true, std::string(dtype_name(t)) + " row_major");
        if (can_interleave(w.view)) {
            weights p = interleaved_copy(w);
            check_settings(p.view, w.view, true, std::string(dtype_name(t)) + " interleaved16");
        }
    }
}

// Calls without an explicit tuning read the active table (by the first weight's dtype and m).
TEST(AutotuneSettings, ActiveTableIsWhatCallsRead) {
    tuning_scope restore;
    weights w = make_weights(dtype::f16, 64, 256, 9);
    const int64_t m = 20;
    std::vector<float> x = test::random_floats(m * 256, 10, 1.0f);
    thread_pool pool(2);
    matmul_tuning off{};
    off.bf16_dot = false;
    std::vector<float> want(size_t(m * 64)), y(size_t(m * 64));
    matmul(w.view, x.data(), m, want.data(), pool, &off);
    matmul_tuning_table table;
    table.at(dtype::f16, matmul_m_class::large) = off;
    matmul_tuning_set(table);
    EXPECT_EQ(matmul_tuning_active().at(dtype::f16, matmul_m_class::large), off);
    matmul(w.view, x.data(), m, y.data(), pool);
    EXPECT_EQ(y, want);
    matmul_tuning_reset();
    EXPECT_EQ(matmul_tuning_active().at(dtype::f16, matmul_m_class::large), matmul_tuning{});
    EXPECT_EQ(matmul_m_class_of(1), matmul_m_class::gemv);
    EXPECT_EQ(matmul_m_class_of(2), matmul_m_class::small);
    EXPECT_EQ(matmul_m_class_of(16), matmul_m_class::small);
    EXPECT_EQ(matmul_m_class_of(17), matmul_m_class::large);
}

// ---- the search and its budget ------------------------------------------------------------------

struct small_model {
    std::vector<weights> store;
    tune_workload calls;
};

// Two layers' worth of calls of mixed dtypes, small enough to run in milliseconds.
small_model make_model(bool interleaved) {
    small_model s;
    s.store.reserve(16);
    auto add = [&](dtype t, int64_t n_out, int64_t n_in) -> weight_view {
        weights w = make_weights(t, n_out, n_in, 40 + s.store.size());
        if (interleaved && can_interleave(w.view)) w = interleaved_copy(w);
        s.store.push_back(std::move(w));
        return s.store.back().view;
    };
    using kind = tune_call::kind;
    for (int layer = 0; layer < 2; ++layer) {
        s.calls.push_back({kind::multi, {add(dtype::q4_0, 64, 256), add(dtype::q4_0, 32, 256), add(dtype::q6_k, 32, 256)}, false});
        s.calls.push_back({kind::single, {add(dtype::q4_0, 256, 64 * 4)}, false});
        s.calls.push_back({kind::swiglu, {add(dtype::f16, 96, 256), add(dtype::f16, 96, 256)}, false});
        s.calls.push_back({kind::single, {add(dtype::q6_k, 256, 512)}, false});
    }
    s.calls.push_back({kind::single, {add(dtype::q8_0, 128, 256)}, true});
    return s;
}

bool in_space(const matmul_tuning& e, dtype t, matmul_m_class c, tune_level level) {
    const tune_space s = tune_space_for(t, c, level);
    auto has = [](const auto& v, auto x) { return std::find(v.begin(), v.end(), x) != v.end(); };
    return has(s.m_block, e.m_block) && has(s.tasks_per_thread, e.tasks_per_thread) && has(s.l2_kib, e.l2_kib) &&
           has(s.bf16_dot, e.bf16_dot);
}

TEST(AutotuneSearch, StaysWithinItsRunBudget) {
    small_model mdl = make_model(true);
    thread_pool pool(2);
    for (int max_runs : {0, 1, 7, 40}) {
        tune_budget b;
        b.max_evaluations = max_runs;
        b.max_seconds = 1e9;
        int traced = 0;
        bool all_in_space = true;
        const tune_result r = autotune(mdl.calls, pool, tune_level::full, matmul_tuning_table(), b, [&](const tune_trial& tr) {
            ++traced;
            all_in_space = all_in_space && in_space(tr.tuning, tr.type, tr.m_class, tune_level::full);
        });
        EXPECT_LE(b.evaluations, max_runs);
        EXPECT_EQ(traced, b.evaluations);
        EXPECT_TRUE(all_in_space);
        EXPECT_EQ(r.dtypes, tune_dtypes(mdl.calls));
        for (const tune_choice& ch : r.choices) EXPECT_TRUE(in_space(ch.tuning, ch.type, ch.m_class, tune_level::full));
        if (max_runs == 0) {
            for (dtype t : r.dtypes)
                for (int c = 0; c < matmul_n_m_classes; ++c) {
                    EXPECT_EQ(r.table.at(t, matmul_m_class(c)), matmul_tuning{});
                }
        }
    }
    // A spent time budget starts nothing (counted, not timed).
    tune_budget b;
    b.max_evaluations = 1000;
    b.max_seconds = 0;
    autotune(mdl.calls, pool, tune_level::fast, matmul_tuning_table(), b);
    EXPECT_EQ(b.evaluations, 0);
}

TEST(AutotuneSearch, TunesEveryLeadingDtypeAndKeepsTheRest) {
    small_model mdl = make_model(true);
    EXPECT_EQ(tune_dtypes(mdl.calls), (std::vector<dtype>{dtype::f16, dtype::q4_0, dtype::q8_0, dtype::q6_k}));
    thread_pool pool(2);
    matmul_tuning_table base;
    const matmul_tuning odd{32, 3, 0, false};
    base.at(dtype::bf16, matmul_m_class::large) = odd;  // not in the workload: kept
    base.at(dtype::q4_0, matmul_m_class::large) = odd;  // in it: tuned from the defaults
    base.set_repack(dtype::q8_0, false);
    tune_budget b = tune_budget_for(tune_level::fast);
    b.max_seconds = 1e9;  // bounded by runs only, so that the test does not depend on the machine's speed
    std::vector<int> per_class(matmul_n_m_classes, 0);
    const tune_result r = autotune(mdl.calls, pool, tune_level::fast, base, b,
                                   [&](const tune_trial& tr) { ++per_class[int(tr.m_class)]; });
    EXPECT_GT(b.evaluations, 0);
    EXPECT_LE(b.evaluations, tune_budget_for(tune_level::fast).max_evaluations);
    for (int c = 0; c < matmul_n_m_classes; ++c) EXPECT_GT(per_class[size_t(c)], 0) << c;
    EXPECT_EQ(r.table.at(dtype::bf16, matmul_m_class::large), odd);
    EXPECT_TRUE(in_space(r.table.at(dtype::q4_0, matmul_m_class::large), dtype::q4_0, matmul_m_class::large, tune_level::fast));
    EXPECT_FALSE(r.table.repack_of(dtype::q8_0));
    EXPECT_EQ(r.choices.size(), size_t(4 * matmul_n_m_classes));
    // Level off changes nothing and runs nothing.
    tune_budget none = tune_budget_for(tune_level::full);
    const tune_result off = autotune(mdl.calls, pool, tune_level::off, base, none);
    EXPECT_EQ(none.evaluations, 0);
    EXPECT_EQ(off.table.at(dtype::q4_0, matmul_m_class::large), odd);
}

TEST(AutotuneSearch, LayoutsStayWithinBudgetAndOnlyTouchTheirDtypes) {
    small_model mdl = make_model(false);
    thread_pool pool(2);
    for (int max_runs : {0, 5, 200}) {
        matmul_tuning_table table;
        table.set_repack(dtype::bf16, false);
        tune_budget b;
        b.max_evaluations = max_runs;
        b.max_seconds = 1e9;
        int traced = 0;
        autotune_layouts(mdl.calls, pool, &table, b, [&](const tune_trial&) { ++traced; });
        EXPECT_LE(b.evaluations, max_runs);
        EXPECT_EQ(traced, b.evaluations);
        EXPECT_FALSE(table.repack_of(dtype::bf16));
        EXPECT_TRUE(table.repack_of(dtype::f32));
        if (max_runs == 0) {
            EXPECT_EQ(b.evaluations, 0);
        }
    }
}

// ---- the cache ------------------------------------------------------------------------------------

tune_key test_key() {
    small_model mdl = make_model(false);
    return tune_key_for(mdl.calls, 2, tune_level::fast, "repack automatic");
}

std::string read_all(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_all(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

TEST(AutotuneCache, KeyNamesThisMachineAndWorkload) {
    const tune_key k = test_key();
    EXPECT_FALSE(k.cpu.empty());
    EXPECT_NE(k.isa.find(isa_name(isa_active())), std::string::npos);
    EXPECT_NE(k.build.find("kernels "), std::string::npos);
    EXPECT_NE(k.workload.find("threads 2 level fast repack automatic"), std::string::npos);
    EXPECT_NE(k.workload.find("swiglu f16:96x256"), std::string::npos);
    small_model mdl = make_model(false);
    EXPECT_NE(tune_key_for(mdl.calls, 3, tune_level::fast, "").workload, k.workload);
    const std::string dir = test::temp_dir();
    EXPECT_EQ(tune_cache_path(dir, k), tune_cache_path(dir, test_key()));
    EXPECT_NE(tune_cache_path(dir, k), tune_cache_path(dir, tune_key_for(mdl.calls, 3, tune_level::fast, "")));
    // The directory: KVSERVE_TUNE_CACHE first, then XDG_CACHE_HOME.
    const char* old = std::getenv("KVSERVE_TUNE_CACHE");
    const char* old_xdg = std::getenv("XDG_CACHE_HOME");
    const std::string saved = old ? old : "", saved_xdg = old_xdg ? old_xdg : "";
    setenv("KVSERVE_TUNE_CACHE", "/x/y", 1);
    EXPECT_EQ(tune_cache_dir(), "/x/y");
    unsetenv("KVSERVE_TUNE_CACHE");
    setenv("XDG_CACHE_HOME", "/c", 1);
    EXPECT_EQ(tune_cache_dir(), "/c/kvserve");
    if (old) setenv("KVSERVE_TUNE_CACHE", saved.c_str(), 1);
    if (old_xdg) {
        setenv("XDG_CACHE_HOME", saved_xdg.c_str(), 1);
    } else {
        unsetenv("XDG_CACHE_HOME");
    }
}

TEST(AutotuneCache, RoundTrips) {
    const tune_key key = test_key();
    const std::string path = tune_cache_path(test::temp_dir() + "/round/trip", key);  // the directory is created
    matmul_tuning_table t;
    t.at(dtype::q4_0, matmul_m_class::gemv) = {64, 4, 512, true};
    t.at(dtype::q4_0, matmul_m_class::large) = {128, 16, 0, true};
    t.at(dtype::f16, matmul_m_class::small) = {64, 2, 512, false};
    t.at(dtype::q8_0, matmul_m_class::large) = {32, 4, 1024, true};  // not written: q8_0 is not listed
    t.set_repack(dtype::f16, false);
    ASSERT_TRUE(tune_cache_write(path, key, t, {dtype::f16, dtype::q4_0}));
    matmul_tuning_table back;
    testing::internal::CaptureStderr();
    ASSERT_TRUE(tune_cache_read(path, key, &back));
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
    for (dtype d : {dtype::f16, dtype::q4_0}) {
        for (int c = 0; c < matmul_n_m_classes; ++c) {
            EXPECT_EQ(back.at(d, matmul_m_class(c)), t.at(d, matmul_m_class(c))) << dtype_name(d) << " " << c;
        }
        EXPECT_EQ(back.repack_of(d), t.repack_of(d));
    }
    EXPECT_EQ(back.at(dtype::q8_0, matmul_m_class::large), matmul_tuning{});
    // Absent: false, silently.
    testing::internal::CaptureStderr();
    EXPECT_FALSE(tune_cache_read(path + ".absent", key, &back));
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

// Reads `path` expecting it to be ignored with a warning that contains `why`; the table is
// left as it was.
void expect_ignored(const std::string& path, const tune_key& key, const std::string& why) {
    matmul_tuning_table t;
    t.at(dtype::q4_0, matmul_m_class::gemv) = {64, 3, 512, true};
    testing::internal::CaptureStderr();
    EXPECT_FALSE(tune_cache_read(path, key, &t));
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("ignoring the matmul tuning file"), std::string::npos) << err;
    EXPECT_NE(err.find(why), std::string::npos) << err;
    EXPECT_EQ(t.at(dtype::q4_0, matmul_m_class::gemv), (matmul_tuning{64, 3, 512, true}));
}

TEST(AutotuneCache, CorruptFilesAreIgnoredWithAWarning) {
    const tune_key key = test_key();
    const std::string path = tune_cache_path(test::temp_dir() + "/corrupt", key);
    matmul_tuning_table t;
    t.at(dtype::q4_0, matmul_m_class::large) = {128, 16, 0, true};
    ASSERT_TRUE(tune_cache_write(path, key, t, {dtype::q4_0}));
    const std::string good = read_all(path);
    // A flipped digit in a value: the checksum no longer matches.
    std::string bad = good;
    const size_t at = bad.find("tune: q4_0 large 128");
    ASSERT_NE(at, std::string::npos);
    bad[at + 17] = '9';
    write_all(path, bad);
    expect_ignored(path, key, "checksum");
    write_all(path, good.substr(0, good.size() / 2));  // truncated
    expect_ignored(path, key, "truncated");
    write_all(path, std::string("\x00\xff garbage\n", 11));
    expect_ignored(path, key, "not a tuning file");
    write_all(path, "");
    expect_ignored(path, key, "not a tuning file");
    // A well-formed file with an out-of-range value (checksum recomputed as the writer does).
    std::string body = good.substr(0, good.rfind("checksum: "));
    const size_t v = body.find("tune: q4_0 large 128 16");
    body.replace(v, 23, "tune: q4_0 large 0 16");
    uint64_t h = 1469598103934665603ull;
    for (unsigned char ch : body) h = (h ^ ch) * 1099511628211ull;
    char sum[32];
    std::snprintf(sum, sizeof sum, "checksum: %016llx\n", (unsigned long long)h);
    write_all(path, body + sum);
    expect_ignored(path, key, "bad tune line");
    // Replaced by a fresh write, then read again.
    ASSERT_TRUE(tune_cache_write(path, key, t, {dtype::q4_0}));
    matmul_tuning_table back;
    EXPECT_TRUE(tune_cache_read(path, key, &back));
    EXPECT_EQ(back.at(dtype::q4_0, matmul_m_class::large), (matmul_tuning{128, 16, 0, true}));
}

TEST(AutotuneCache, FilesForAnotherCpuBuildOrWorkloadAreIgnored) {
    const tune_key key = test_key();
    const std::string path = tune_cache_path(test::temp_dir() + "/foreign", key);
    matmul_tuning_table t;
    struct variant {
        std::string tune_key::*field;
        const char* why;
    };
    for (const variant& v : {variant{&tune_key::cpu, "another cpu"}, variant{&tune_key::build, "another build"},
                             variant{&tune_key::isa, "another isa"}, variant{&tune_key::workload, "another workload"}}) {
        tune_key other = key;
        other.*v.field = "something else";
        ASSERT_TRUE(tune_cache_write(path, other, t, {dtype::q4_0}));
        expect_ignored(path, key, v.why);
        ASSERT_TRUE(tune_cache_write(path, key, t, {dtype::q4_0}));  // replaced
        matmul_tuning_table back;
        EXPECT_TRUE(tune_cache_read(path, key, &back));
    }
}

// ---- at model load ---------------------------------------------------------------------------------

// Load with tuning on the stories260K fixture: the first load tunes and writes the cache file,
// the second reads it, and a corrupt one is replaced.
TEST(AutotuneLoad, TunesOnceThenReadsTheCache) {
    KVS_SKIP_IF_MISSING(model_path, "models/stories260K.gguf");
    tuning_scope restore;
    const std::string dir = test::temp_dir() + "/load-cache";
    const char* old = std::getenv("KVSERVE_TUNE_CACHE");
    const std::string saved = old ? old : "";
    setenv("KVSERVE_TUNE_CACHE", dir.c_str(), 1);
    load_options opts;
    opts.tune = tune_level::fast;
    opts.tune_threads = 2;
    testing::internal::CaptureStderr();
    auto first = llama_model::load(model_path, opts);
    std::string err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(first) << first.message();
    EXPECT_NE(err.find("matmul tuning (fast):"), std::string::npos) << err;
    EXPECT_NE(err.find("saved to"), std::string::npos) << err;
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path().string());
    ASSERT_EQ(files.size(), 1u);
    testing::internal::CaptureStderr();
    auto second = llama_model::load(model_path, opts);
    err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(second);
    EXPECT_NE(err.find("read " + files[0]), std::string::npos) << err;
    write_all(files[0], "kvserve-matmul-tuning 1\ncpu: x\nchecksum: 0\n");
    testing::internal::CaptureStderr();
    auto third = llama_model::load(model_path, opts);
    err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(third);
    EXPECT_NE(err.find("ignoring the matmul tuning file"), std::string::npos) << err;
    EXPECT_NE(err.find("saved to"), std::string::npos) << err;
    EXPECT_NE(read_all(files[0]).find("workload: threads 2 level fast repack automatic"), std::string::npos);
    if (old) {
        setenv("KVSERVE_TUNE_CACHE", saved.c_str(), 1);
    } else {
        unsetenv("KVSERVE_TUNE_CACHE");
    }
}

}  // namespace
}  // namespace kvs::cpu
