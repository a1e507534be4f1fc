// Helpers shared by the tests: where the fixtures are, normalized error, temp files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvs::test {

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
