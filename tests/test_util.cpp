#include "test_util.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>

namespace kvs::test {

namespace fs = std::filesystem;

std::string shared_dir() {
    if (const char* env = std::getenv("KVSERVE_SHARED"); env && *env) return env;
    return (fs::path(KVSERVE_SOURCE_DIR) / ".." / "shared").lexically_normal().string();
}

std::string shared_file(const std::string& relative) {
    fs::path p = fs::path(shared_dir()) / relative;
    std::error_code ec;
    return fs::is_regular_file(p, ec) ? p.string() : std::string();
}

namespace {
struct temp_dir_holder {
    std::string path;
    temp_dir_holder() {
        std::string tmpl = (fs::temp_directory_path() / "kvserve-test-XXXXXX").string();
        if (char* p = mkdtemp(tmpl.data())) path = p;
    }
    ~temp_dir_holder() {
        std::error_code ec;
        if (!path.empty()) fs::remove_all(path, ec);
    }
};
}  // namespace

std::string temp_dir() {
    static temp_dir_holder holder;
    return holder.path;
}

double nmse_norm(const float* a, const double* b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; ++i) {
        double d = double(a[i]) - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double nmse_norm(const float* a, const float* b, int64_t n) {
    std::vector<double> bd(b, b + n);
    return nmse_norm(a, bd.data(), n);
}

std::vector<float> random_floats(int64_t n, uint64_t seed, float scale) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> dist(-scale, scale);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = dist(rng);
    return v;
}

int run_command(const std::string& cmd, std::string* output) {
    std::string full = cmd + " 2>&1";
    FILE* f = popen(full.c_str(), "r");
    if (!f) return -1;
    std::array<char, 4096> buf;
    std::string out;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
    int rc = pclose(f);
    if (output) *output = out;
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string kvserve_binary() {
    if (const char* env = std::getenv("KVSERVE_BINARY_PATH"); env && *env) return env;
    return KVSERVE_BINARY;
}

packed_kv pack_kv(const std::vector<float>& k, const std::vector<float>& v, int64_t n_pages, int64_t n_kv_head,
                  int64_t page_size, int64_t head_dim, dtype type, bool head_major, std::optional<dtype> v_type, bool keys_only) {
    packed_kv p;
    const cpu::kv_page_layout lay{type, n_kv_head, page_size, head_dim, v_type, 0, keys_only};
    p.k.assign(size_t(n_pages) * lay.k_page_bytes(), 0xFF);
    if (!keys_only) p.v.assign(size_t(n_pages) * lay.v_page_bytes(), 0xFF);
    p.view = {p.k.data(), keys_only ? p.k.data() : p.v.data(), n_kv_head, page_size, head_dim, type, head_major ? n_pages : 0, v_type, 0,
              keys_only};
    std::vector<float> krow(size_t(n_kv_head * head_dim)), vrow(krow.size());
    for (int64_t pg = 0; pg < n_pages; ++pg)
        for (int64_t r = 0; r < page_size; ++r) {
            for (int64_t h = 0; h < n_kv_head; ++h)
                for (int64_t d = 0; d < head_dim; ++d) {
                    const size_t src = size_t(((pg * n_kv_head + h) * page_size + r) * head_dim + d);
                    krow[size_t(h * head_dim + d)] = k[src];
                    vrow[size_t(h * head_dim + d)] = v[src];
                }
            cpu::kv_store_row(lay, p.k.data() + size_t(pg) * p.view.k_page_stride(), keys_only ? nullptr : p.v.data() + size_t(pg) * p.view.v_page_stride(),
                              p.view.k_head_stride(), p.view.v_head_stride(), r, krow.data(), vrow.data());
        }
    return p;
}

}  // namespace kvs::test
