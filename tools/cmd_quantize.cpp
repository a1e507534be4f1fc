// kvserve quantize IN OUT TYPE: rewrites a GGUF with its weight matrices in another dtype, or
// in llama.cpp's q4_k_m / q5_k_m mixtures (model/shapes.h: weight_dtype_for).
// Metadata is copied (general.file_type updated to llama.cpp's LLAMA_FTYPE numbering); 2-D
// `.weight` matrices and 3-D expert stacks (`*_exps.weight`, rows of ne[0]) whose row length is
// a multiple of TYPE's block size become TYPE (others Q8_0 for the k-quants when possible, else
// F16; token_embd included, as llama.cpp does); 1-D tensors (norms, biases) and MoE routers
// (`ffn_gate_inp`) are written F32.
// Each tensor is dequantized from its source dtype row by row and re-encoded inside the
// writer's fill callback, so only one tensor is in memory at a time.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "command.h"
#include "common.h"
#include "core/dtype.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "model/shapes.h"

namespace kvs::tools {

namespace {

// Re-encodes tensor `src` as `type` into dst (rows of ne[0] elements).
status convert_tensor(const gguf_tensor_info& src, dtype type, uint8_t* dst) {
    if (src.type == type) {  // bit-exact copy, also for dtypes kvserve cannot decode
        std::memcpy(dst, src.data, size_t(src.n_bytes));
        return status::ok();
    }
    if (!dtype_info(src.type).supported)
        return status::error(strfmt("cannot dequantize %s (source dtype not supported)", dtype_name(src.type)));
    const int64_t ne0 = src.ne[0], rows = src.n_elements() / ne0;
    const size_t src_row = dtype_row_bytes(src.type, ne0), dst_row = dtype_row_bytes(type, ne0);
    std::vector<float> row(static_cast<size_t>(ne0));  // (ne0) f32 scratch
    for (int64_t r = 0; r < rows; ++r) {
        if (!dequantize_row(src.type, src.data + size_t(r) * src_row, row.data(), ne0))
            return status::error(strfmt("cannot dequantize %s", dtype_name(src.type)));
        if (!quantize_row(type, row.data(), dst + size_t(r) * dst_row, ne0))
            return status::error(strfmt("cannot encode %s rows of %lld", dtype_name(type), (long long)ne0));
    }
    return status::ok();
}

int cmd_quantize(int argc, char** argv) {
    CLI::App app("Rewrite a GGUF model with its weight matrices in another dtype", "kvserve quantize");
    std::string in, out, type_name;
    app.add_option("input", in, "source GGUF")->required();
    app.add_option("output", out, "GGUF file to write")->required();
    app.add_option("type", type_name, "target: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, q4_k_m, q5_k_m")
        ->required();
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    weight_format format;
    if (!weight_format_from_name(type_name, &format)) {
        std::fprintf(stderr,
                     "kvserve quantize: unsupported type '%s' (use f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, "
                     "q4_k_m or q5_k_m)\n",
                     type_name.c_str());
        return 2;
    }
    const dtype type = format.base;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(in, ec)) {
        std::fprintf(stderr, "kvserve quantize: no such file: %s\n", in.c_str());
        return 2;
    }
    if (std::filesystem::exists(out, ec) && std::filesystem::equivalent(in, out, ec)) {
        std::fprintf(stderr, "kvserve quantize: output would overwrite the input %s\n", in.c_str());
        return 2;
    }
    auto opened = gguf_file::open(in);
    if (!opened) {
        std::fprintf(stderr, "kvserve quantize: %s\n", opened.message().c_str());
        return 1;
    }
    std::shared_ptr<gguf_file> src(std::move(opened.value()));
    if (src->tensors().empty()) {
        std::fprintf(stderr, "kvserve quantize: %s has no tensors (a vocabulary-only file?)\n", in.c_str());
        return 1;
    }

    gguf_writer w;
    w.copy_metadata(*src);
    w.set_u32("general.file_type", uint32_t(llama_ftype_of(format)));
    if (dtype_info(type).block_size > 1) w.set_u32("general.quantization_version", 2);
    uint64_t in_bytes = 0, out_bytes = 0;
    std::map<std::string, int> n_by_type;  // output dtype name -> tensors
    // The mixtures depend on the layer count (blk.N.* tensors) and on a separate LM head.
    int64_t n_layer = 0;
    for (const gguf_tensor_info& t : src->tensors()) {
        int64_t i = 0;
        if (std::sscanf(std::string(t.name).c_str(), "blk.%lld.", reinterpret_cast<long long*>(&i)) == 1)
            n_layer = std::max(n_layer, i + 1);
    }
    const bool has_output = src->find_tensor("output.weight") != nullptr;
    for (const gguf_tensor_info& t : src->tensors()) {
        dtype tt = weight_dtype_for(t.name, t.n_dims, t.ne[0], format, n_layer, has_output);
        if (tt != t.type && !dtype_info(t.type).supported) {
            std::fprintf(stderr, "kvserve quantize: tensor %.*s: source dtype %s cannot be dequantized\n", int(t.name.size()),
                         t.name.data(), dtype_name(t.type));
            return 1;
        }
        n_by_type[dtype_name(tt)]++;
        std::vector<int64_t> ne(t.ne, t.ne + t.n_dims);
        const gguf_tensor_info* tp = &t;
        status s = w.add_tensor(std::string(t.name), tt, ne, [src, tp, tt](uint8_t* dst) { return convert_tensor(*tp, tt, dst); });
        if (!s) {
            std::fprintf(stderr, "kvserve quantize: %s\n", s.message().c_str());
            return 1;
        }
        in_bytes += t.n_bytes;
        out_bytes += dtype_row_bytes(tt, t.ne[0]) * uint64_t(t.n_elements() / t.ne[0]);
    }
    if (status s = w.write(out); !s) {
        std::fprintf(stderr, "kvserve quantize: %s\n", s.message().c_str());
        return 1;
    }
    std::string counts;
    for (const auto& [name, n] : n_by_type) counts += strfmt("%s%d %s", counts.empty() ? "" : ", ", n, name.c_str());
    std::printf("wrote %s: %zu tensors (%s); %.2f MB -> %.2f MB of weights\n", out.c_str(), src->tensors().size(),
                counts.c_str(), double(in_bytes) / 1e6, double(out_bytes) / 1e6);
    return 0;
}

}  // namespace

KVS_COMMAND("quantize", "rewrite a GGUF model's weights in another dtype", cmd_quantize);

}  // namespace kvs::tools
