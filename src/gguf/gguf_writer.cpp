#include "gguf/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace kvs {

namespace {

void append_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
    if (n == 0) return;
    size_t at = out.size();
    out.resize(at + n);
    std::memcpy(out.data() + at, p, n);
}

template <class T>
void append(std::vector<uint8_t>& out, const T& v) {
    append_bytes(out, &v, sizeof(T));
}

void append_string(std::vector<uint8_t>& out, std::string_view s) {
    append(out, uint64_t(s.size()));
    append_bytes(out, s.data(), s.size());
}

std::vector<uint8_t> typed(gguf_type t) {
    std::vector<uint8_t> out;
    append(out, uint32_t(t));
    return out;
}

size_t elem_size(gguf_type t) {
    switch (t) {
        case gguf_type::u8: case gguf_type::i8: case gguf_type::boolean: return 1;
        case gguf_type::u16: case gguf_type::i16: return 2;
        case gguf_type::u32: case gguf_type::i32: case gguf_type::f32: return 4;
        default: return 8;
    }
}

}  // namespace

void gguf_writer::put(const std::string& key, std::vector<uint8_t> encoded) {
    for (auto& e : entries_)
        if (e.key == key) {
            e.encoded = std::move(encoded);
            return;
        }
    entries_.push_back({key, std::move(encoded)});
}

bool gguf_writer::has_key(const std::string& key) const {
    for (auto& e : entries_)
        if (e.key == key) return true;
    return false;
}

void gguf_writer::set_u32(const std::string& key, uint32_t v) { auto e = typed(gguf_type::u32); append(e, v); put(key, std::move(e)); }
void gguf_writer::set_i32(const std::string& key, int32_t v) { auto e = typed(gguf_type::i32); append(e, v); put(key, std::move(e)); }
void gguf_writer::set_u64(const std::string& key, uint64_t v) { auto e = typed(gguf_type::u64); append(e, v); put(key, std::move(e)); }
void gguf_writer::set_f32(const std::string& key, float v) { auto e = typed(gguf_type::f32); append(e, v); put(key, std::move(e)); }
void gguf_writer::set_bool(const std::string& key, bool v) { auto e = typed(gguf_type::boolean); append(e, uint8_t(v ? 1 : 0)); put(key, std::move(e)); }
void gguf_writer::set_string(const std::string& key, const std::string& v) { auto e = typed(gguf_type::string); append_string(e, v); put(key, std::move(e)); }

void gguf_writer::set_string_array(const std::string& key, const std::vector<std::string>& v) {
    auto e = typed(gguf_type::array);
    append(e, uint32_t(gguf_type::string));
    append(e, uint64_t(v.size()));
    for (auto& s : v) append_string(e, s);
    put(key, std::move(e));
}

void gguf_writer::set_f32_array(const std::string& key, const std::vector<float>& v) {
    auto e = typed(gguf_type::array);
    append(e, uint32_t(gguf_type::f32));
    append(e, uint64_t(v.size()));
    for (float x : v) append(e, x);
    put(key, std::move(e));
}

void gguf_writer::set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
    auto e = typed(gguf_type::array);
    append(e, uint32_t(gguf_type::i32));
    append(e, uint64_t(v.size()));
    for (int32_t x : v) append(e, x);
    put(key, std::move(e));
}

void gguf_writer::set_value(const std::string& key, const gguf_value& v) {
    auto e = typed(v.type);
    switch (v.type) {
        case gguf_type::string: append_string(e, v.str); break;
        case gguf_type::array:
            append(e, uint32_t(v.elem_type));
            append(e, v.n_elem);
            if (v.elem_type == gguf_type::string) {
                for (auto s : v.elem_strings) append_string(e, s);
            } else {
                append_bytes(e, v.elem_data, size_t(v.n_elem) * elem_size(v.elem_type));
            }
            break;
        case gguf_type::f32: append(e, float(v.f)); break;
        case gguf_type::f64: append(e, v.f); break;
        default: {
            uint64_t raw = v.u;
            append_bytes(e, &raw, elem_size(v.type));
        }
    }
    put(key, std::move(e));
}

void gguf_writer::copy_metadata(const gguf_file& src) {
    for (auto& kv : src.kvs())
        if (kv.key != "general.alignment") set_value(std::string(kv.key), kv.value);
}

status gguf_writer::add_tensor(const std::string& name, dtype type, const std::vector<int64_t>& ne, fill_fn fill) {
    if (ne.empty() || ne.size() > size_t(gguf_max_dims))
        return status::error(strfmt("tensor %s: %zu dimensions (expected 1 to %d)", name.c_str(), ne.size(), gguf_max_dims));
    const dtype_traits& tr = dtype_info(type);
    if (!tr.known) return status::error("tensor " + name + ": unknown dtype");
    int64_t n = 1;
    for (int64_t d : ne) {
        if (d <= 0) return status::error("tensor " + name + ": non-positive dimension");
        n *= d;
    }
    if (ne[0] % tr.block_size != 0)
        return status::error(strfmt("tensor %s: row length %lld is not a multiple of the %s block size %lld",
                                    name.c_str(), (long long)ne[0], tr.name, (long long)tr.block_size));
    for (auto& t : tensors_)
        if (t.name == name) return status::error("tensor " + name + " added twice");
    tensors_.push_back({name, type, ne, uint64_t(n / tr.block_size) * uint64_t(tr.type_size), std::move(fill)});
    return status::ok();
}

status gguf_writer::add_tensor_data(const std::string& name, dtype type, const std::vector<int64_t>& ne, const void* data, size_t bytes) {
    auto copy = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
    KVS_TRY(add_tensor(name, type, ne, [copy](uint8_t* dst) {
        std::memcpy(dst, copy->data(), copy->size());
        return status::ok();
    }));
    if (tensors_.back().n_bytes != bytes) {
        tensors_.pop_back();
        return status::error(strfmt("tensor %s: %zu bytes given for a shape of %llu bytes", name.c_str(), bytes,
                                    (unsigned long long)tensors_.back().n_bytes));
    }
    return status::ok();
}

status gguf_writer::write(const std::string& path) const {
    std::vector<uint8_t> head;
    append(head, gguf_magic);
    append(head, uint32_t(3));
    append(head, uint64_t(tensors_.size()));
    append(head, uint64_t(entries_.size()));
    for (auto& e : entries_) {
        append_string(head, e.key);
        append_bytes(head, e.encoded.data(), e.encoded.size());
    }
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (auto& t : tensors_) {
        append_string(head, t.name);
        append(head, uint32_t(t.ne.size()));
        for (int64_t d : t.ne) append(head, uint64_t(d));
        append(head, uint32_t(t.type));
        append(head, offset);
        offsets.push_back(offset);
        offset += (t.n_bytes + alignment_ - 1) / alignment_ * alignment_;
    }
    head.resize((head.size() + alignment_ - 1) / alignment_ * alignment_, 0);

    std::string tmp = path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) return status::error(path + ": " + std::strerror(errno));
    auto fail = [&](const std::string& msg) {
        std::fclose(f);
        std::remove(tmp.c_str());
        return status::error(path + ": " + msg);
    };
    if (std::fwrite(head.data(), 1, head.size(), f) != head.size()) return fail(std::strerror(errno));
    std::vector<uint8_t> buf;
    for (size_t k = 0; k < tensors_.size(); ++k) {
        const auto& t = tensors_[k];
        uint64_t padded = (t.n_bytes + alignment_ - 1) / alignment_ * alignment_;
        buf.assign(size_t(padded), 0);
        status s = t.fill(buf.data());
        if (!s) return fail("tensor " + t.name + ": " + s.message());
        if (std::fwrite(buf.data(), 1, buf.size(), f) != buf.size()) return fail(std::strerror(errno));
    }
    if (std::fclose(f) != 0) {
        std::remove(tmp.c_str());
        return status::error(path + ": " + std::strerror(errno));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        return status::error(path + ": " + std::strerror(errno));
    }
    return status::ok();
}

}  // namespace kvs
