// kvserve inspect MODEL: everything a GGUF holds, without loading it as a model: version,
// every metadata key with its type and value (arrays as type[count] with their first
// elements), every tensor (name, dtype, shape, offset, bytes) and totals. Works on
// vocabulary-only files. For YOCO models also the self-/cross-decoder split and the window.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include <CLI/CLI.hpp>

#include "command.h"
#include "common.h"
#include "gguf/gguf.h"
#include "model/hparams.h"

namespace kvs::tools {

namespace {

// A string for display: control characters escaped, cut at `max` bytes.
std::string quoted(std::string_view s, size_t max = 120) {
    std::string out = "\"";
    for (size_t i = 0; i < s.size() && i < max; ++i) {
        unsigned char c = uint8_t(s[i]);
        if (c == '"' || c == '\\') out += '\\', out += char(c);
        else if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c < 32 || c == 127) out += strfmt("\\x%02x", c);
        else out += char(c);
    }
    out += s.size() > max ? strfmt("\"... (%zu bytes)", s.size()) : "\"";
    return out;
}

std::string array_element(const gguf_value& v, uint64_t k) {
    const uint8_t* p = v.elem_data;
    auto ld = [&](auto x, size_t size) {
        std::memcpy(&x, p + k * size, size);
        return x;
    };
    switch (v.elem_type) {
        case gguf_type::u8: return std::to_string(ld(uint8_t(), 1));
        case gguf_type::i8: return std::to_string(ld(int8_t(), 1));
        case gguf_type::u16: return std::to_string(ld(uint16_t(), 2));
        case gguf_type::i16: return std::to_string(ld(int16_t(), 2));
        case gguf_type::u32: return std::to_string(ld(uint32_t(), 4));
        case gguf_type::i32: return std::to_string(ld(int32_t(), 4));
        case gguf_type::u64: return std::to_string(ld(uint64_t(), 8));
        case gguf_type::i64: return std::to_string(ld(int64_t(), 8));
        case gguf_type::f32: return strfmt("%g", double(ld(float(), 4)));
        case gguf_type::f64: return strfmt("%g", ld(double(), 8));
        case gguf_type::boolean: return ld(uint8_t(), 1) ? "true" : "false";
        case gguf_type::string: return quoted(v.elem_strings[size_t(k)], 40);
        default: return "?";
    }
}

std::string value_string(const gguf_value& v, int n_show) {
    switch (v.type) {
        case gguf_type::string: return quoted(v.str);
        case gguf_type::boolean: return v.u ? "true" : "false";
        case gguf_type::f32: case gguf_type::f64: return strfmt("%g", v.f);
        case gguf_type::u8: case gguf_type::u16: case gguf_type::u32: case gguf_type::u64: return std::to_string(v.u);
        case gguf_type::i8: case gguf_type::i16: case gguf_type::i32: case gguf_type::i64: return std::to_string(v.i);
        case gguf_type::array: {
            std::string s = "[";
            uint64_t n = std::min<uint64_t>(v.n_elem, uint64_t(n_show));
            for (uint64_t k = 0; k < n; ++k) s += (k ? ", " : "") + array_element(v, k);
            if (v.n_elem > n) s += ", ...";
            return s + "]";
        }
        default: return "?";
    }
}

std::string type_string(const gguf_value& v) {
    if (v.type != gguf_type::array) return gguf_type_name(v.type);
    return strfmt("%s[%" PRIu64 "]", gguf_type_name(v.elem_type), v.n_elem);
}

std::string human_bytes(uint64_t n) {
    if (n >= (uint64_t(1) << 30)) return strfmt("%.2f GiB", double(n) / double(uint64_t(1) << 30));
    if (n >= (uint64_t(1) << 20)) return strfmt("%.2f MiB", double(n) / double(uint64_t(1) << 20));
    if (n >= 1024) return strfmt("%.2f KiB", double(n) / 1024.0);
    return strfmt("%" PRIu64 " B", n);
}

int cmd_inspect(int argc, char** argv) {
    CLI::App app("Print the metadata and tensor table of a GGUF file", "kvserve inspect");
    std::string path;
    int n_show = 5;
    bool no_tensors = false;
    app.add_option("model", path, "GGUF file")->required();
    app.add_option("-n,--array-items", n_show, "array elements to show per key")->check(CLI::Range(0, 1000000))->capture_default_str();
    app.add_flag("--no-tensors", no_tensors, "print the metadata only");
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
        std::fprintf(stderr, "kvserve inspect: no such file: %s\n", path.c_str());
        return 2;
    }
    auto opened = gguf_file::open(path);
    if (!opened) {
        std::fprintf(stderr, "kvserve inspect: %s\n", opened.message().c_str());
        return 1;
    }
    const gguf_file& f = *opened.value();
    std::printf("%s: GGUF v%u, %s, alignment %u, data at byte %zu\n", path.c_str(), f.version(), human_bytes(f.file_size()).c_str(),
                f.alignment(), f.data_offset());
    if (auto arch = f.get_string_opt("general.architecture"); arch && arch.value() && *arch.value() == "yoco") {
        // The decoder-decoder's layout, as the loader reads it (or why it would refuse).
        auto hp = model_hparams::from_gguf(f);
        if (hp) {
            const model_hparams& h = hp.value();
            std::printf("yoco: self-decoder layers 0-%lld (sliding window %lld tokens, own K/V), cross-decoder layers "
                        "%lld-%lld (one global K/V)\n",
                        (long long)(h.n_layer_self - 1), (long long)h.sliding_window, (long long)h.n_layer_self,
                        (long long)(h.n_layer - 1));
        } else {
            std::printf("yoco: invalid hyper-parameters: %s\n", hp.message().c_str());
        }
    }
    std::printf("\nmetadata (%zu keys):\n", f.kvs().size());
    size_t width = 0;
    for (const auto& kv : f.kvs()) width = std::max(width, kv.key.size());
    for (const auto& kv : f.kvs())
        std::printf("  %-*.*s  %-14s %s\n", int(width), int(kv.key.size()), kv.key.data(), type_string(kv.value).c_str(),
                    value_string(kv.value, n_show).c_str());

    uint64_t n_bytes = 0;
    int64_t n_params = 0;
    std::map<std::string, std::pair<int, uint64_t>> by_type;  // dtype -> (tensors, bytes)
    for (const auto& t : f.tensors()) {
        n_bytes += t.n_bytes;
        n_params += t.n_elements();
        auto& e = by_type[dtype_name(t.type)];
        e.first++;
        e.second += t.n_bytes;
    }
    if (!no_tensors) {
        std::printf("\ntensors (%zu):\n", f.tensors().size());
        size_t nw = 4;
        for (const auto& t : f.tensors()) nw = std::max(nw, t.name.size());
        if (!f.tensors().empty())
            std::printf("  %-*s  %-6s %-22s %14s %14s\n", int(nw), "name", "dtype", "shape", "offset", "bytes");
        for (const auto& t : f.tensors())
            std::printf("  %-*.*s  %-6s %-22s %14" PRIu64 " %14" PRIu64 "\n", int(nw), int(t.name.size()), t.name.data(),
                        dtype_name(t.type), t.shape_string().c_str(), t.offset, t.n_bytes);
    }
    std::printf("\ntotals: %zu tensors, %" PRId64 " elements (%.3fM), %s of tensor data", f.tensors().size(), n_params,
                double(n_params) / 1e6, human_bytes(n_bytes).c_str());
    if (n_params > 0) std::printf(", %.2f bits per element", 8.0 * double(n_bytes) / double(n_params));
    std::printf("\n");
    for (const auto& [name, e] : by_type)
        std::printf("  %-6s %5d tensors  %s\n", name.c_str(), e.first, human_bytes(e.second).c_str());
    return 0;
}

}  // namespace

KVS_COMMAND("inspect", "print a GGUF file's metadata and tensors", cmd_inspect);

}  // namespace kvs::tools
