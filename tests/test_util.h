// Helpers shared by the tests: where the fixtures are, normalized error, temp files.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"

namespace kvs::test {

// K and V given as f32 pages ((n_pages, n_kv_head, page_size, head_dim), the f32 layout)
// stored in a KV format through kv_store_row, as the cache stores them. Bytes no row covers
// (pads of 16-bit formats) are filled with NaN, so a kernel that lets them reach a result fails.
// v_type: V in another format than K. head_major: the KV cache's layout ((n_kv_head, n_pages, block)); else page-major.
// keys_only: a keys-only group (kv_page_layout::v_is_k): K alone is stored and read as V too (v is ignored).
struct packed_kv {
    std::vector<uint8_t> k, v;
    cpu::paged_kv_view view;
};
packed_kv pack_kv(const std::vector<float>& k, const std::vector<float>& v, int64_t n_pages, int64_t n_kv_head,
                  int64_t page_size, int64_t head_dim, dtype type, bool head_major = true,
                  std::optional<dtype> v_type = std::nullopt, bool keys_only = false);

// The shared fixture folder: $KVSERVE_SHARED, else ../shared beside the source tree.
std::string shared_dir();
// Path of a fixture under shared_dir(), or "" if it is absent (callers GTEST_SKIP with a message).
std::string shared_file(const std::string& relative);
// A fresh temporary directory for this test process (removed at exit).
std::string temp_dir();
// Normalized error: ||a - b|| / max(||b||, tiny).
double nmse_norm(const float* a, const double* b, int64_t n);
double nmse_norm(const float* a, const float* b, int64_t n);
// Deterministic pseudo-random floats in [-scale, scale].
std::vector<float> random_floats(int64_t n, uint64_t seed, float scale = 1.0f);
// Runs a shell command, returns its exit status and captures stdout+stderr.
int run_command(const std::string& cmd, std::string* output);
// The kvserve binary under test.
std::string kvserve_binary();

}  // namespace kvs::test

#define KVS_SKIP_IF_MISSING(path_var, relative)                                              \
    std::string path_var = ::kvs::test::shared_file(relative);                               \
    if (path_var.empty())                                                                     \
        GTEST_SKIP() << "fixture " << (relative) << " not found under " << ::kvs::test::shared_dir() \
                     << " (set KVSERVE_SHARED to the shared fixture folder)"
