// GGUF (v2/v3) reader: the whole file is memory-mapped and validated before anything uses it.
// Every structural error (magic, version, counts, string lengths, value types, tensor dims,
// dtypes, offsets and sizes) is reported as one message naming what is wrong; the reader never
// reads outside the mapping. Values and tensor data point into the mapping: a gguf_file must
// outlive the views it hands out.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"
#include "core/status.h"

namespace kvs {

enum class gguf_type : uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
    string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
const char* gguf_type_name(gguf_type t);

inline constexpr uint32_t gguf_magic = 0x46554747;  // "GGUF" little-endian
inline constexpr uint32_t gguf_default_alignment = 32;
inline constexpr int gguf_max_dims = 4;

// One metadata value. Scalars are widened into the matching field; arrays keep a pointer to
// their packed elements inside the mapping (unaligned: read with memcpy or the helpers).
struct gguf_value {
    gguf_type type = gguf_type::u8;
    uint64_t u = 0;     // unsigned integers and bool
    int64_t i = 0;      // signed integers (also set for unsigned values that fit)
    double f = 0;       // f32/f64
    std::string_view str;
    // arrays
    gguf_type elem_type = gguf_type::u8;
    uint64_t n_elem = 0;
    const uint8_t* elem_data = nullptr;           // packed elements (non-string arrays)
    std::vector<std::string_view> elem_strings;   // string arrays

    bool is_integer() const;
    bool is_float() const { return type == gguf_type::f32 || type == gguf_type::f64; }
};

struct gguf_kv {
    std::string_view key;
    gguf_value value;
};

struct gguf_tensor_info {
    std::string_view name;
    int n_dims = 0;
    int64_t ne[gguf_max_dims] = {1, 1, 1, 1};  // ne[0] is the contiguous (row) dimension
    dtype type = dtype::f32;
    uint64_t offset = 0;      // bytes, relative to the data section
    uint64_t n_bytes = 0;
    const uint8_t* data = nullptr;  // inside the mapping

    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
    std::string shape_string() const;  // "[64, 512]"
};

class gguf_file {
public:
    // Maps and validates the file. Errors are prefixed with the path.
    static result<std::unique_ptr<gguf_file>> open(const std::string& path);
    // Validates a buffer the caller keeps alive (fuzzing, tests).
    static result<std::unique_ptr<gguf_file>> parse(const uint8_t* data, size_t size);

    uint32_t version() const { return version_; }
    uint32_t alignment() const { return alignment_; }
    size_t file_size() const { return size_; }
    size_t data_offset() const { return data_offset_; }

    const std::vector<gguf_kv>& kvs() const { return kvs_; }
    const gguf_value* find(std::string_view key) const;
    const std::vector<gguf_tensor_info>& tensors() const { return tensors_; }
    const gguf_tensor_info* find_tensor(std::string_view name) const;

    // Typed getters. They fail with a message naming the key if the key is absent or has an
    // incompatible type; integer getters accept any integer type whose value fits.
    result<std::string> get_string(std::string_view key) const;
    result<int64_t> get_int(std::string_view key) const;
    result<double> get_float(std::string_view key) const;  // accepts floats and integers
    result<bool> get_bool(std::string_view key) const;
    // Optional variants: nullopt when absent, error when present with a wrong type.
    result<std::optional<int64_t>> get_int_opt(std::string_view key) const;
    result<std::optional<double>> get_float_opt(std::string_view key) const;
    result<std::optional<std::string>> get_string_opt(std::string_view key) const;
    result<std::optional<bool>> get_bool_opt(std::string_view key) const;
    // Arrays: element type must match (integer arrays convert from any integer element type).
    result<const std::vector<std::string_view>*> get_string_array(std::string_view key) const;
    result<std::vector<float>> get_f32_array(std::string_view key) const;
    result<std::vector<int64_t>> get_int_array(std::string_view key) const;

private:
    gguf_file() = default;
    status parse_all();

    mapped_file map_;
    const uint8_t* base_ = nullptr;
    size_t size_ = 0;
    uint32_t version_ = 0;
    uint32_t alignment_ = gguf_default_alignment;
    size_t data_offset_ = 0;
    std::vector<gguf_kv> kvs_;
    std::vector<gguf_tensor_info> tensors_;
    std::unordered_map<std::string_view, size_t> kv_index_;
    std::unordered_map<std::string_view, size_t> tensor_index_;
};

}  // namespace kvs
