// GGUF v3 writer, used by `convert`, `quantize` and `synth`. Metadata is kept in insertion
// order; tensor data is produced at write time by a fill callback, so a multi-gigabyte model
// never has to sit in memory whole (one tensor at a time does).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "gguf/gguf.h"

namespace kvs {

class gguf_writer {
public:
    void set_u32(const std::string& key, uint32_t v);
    void set_i32(const std::string& key, int32_t v);
    void set_u64(const std::string& key, uint64_t v);
    void set_f32(const std::string& key, float v);
    void set_bool(const std::string& key, bool v);
    void set_string(const std::string& key, const std::string& v);
    void set_string_array(const std::string& key, const std::vector<std::string>& v);
    void set_f32_array(const std::string& key, const std::vector<float>& v);
    void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
    // Copies a value read from another file (any type, arrays included).
    void set_value(const std::string& key, const gguf_value& v);
    // Copies every metadata entry of `src` (except general.alignment).
    void copy_metadata(const gguf_file& src);
    bool has_key(const std::string& key) const;

    // fill(dst) writes exactly dtype_row_bytes(type, ne[0]) * rows bytes into dst.
    using fill_fn = std::function<status(uint8_t* dst)>;
    // ne: dims, ne[0] contiguous (GGUF order). Fails on a bad shape for the dtype.
    status add_tensor(const std::string& name, dtype type, const std::vector<int64_t>& ne, fill_fn fill);
    // Convenience: copies `bytes` now.
    status add_tensor_data(const std::string& name, dtype type, const std::vector<int64_t>& ne, const void* data, size_t bytes);

    // Writes the file (to a temporary name, renamed on success: no half-written outputs).
    status write(const std::string& path) const;

private:
    struct entry {
        std::string key;
        std::vector<uint8_t> encoded;  // type + value, GGUF encoding
    };
    struct tensor_entry {
        std::string name;
        dtype type;
        std::vector<int64_t> ne;
        uint64_t n_bytes;
        fill_fn fill;
    };
    void put(const std::string& key, std::vector<uint8_t> encoded);
    std::vector<entry> entries_;
    std::vector<tensor_entry> tensors_;
    uint32_t alignment_ = gguf_default_alignment;
};

}  // namespace kvs
