#include "gguf/gguf.h"

#include <cstring>
#include <limits>

namespace kvs {

namespace {

size_t scalar_size(gguf_type t) {
    switch (t) {
        case gguf_type::u8: case gguf_type::i8: case gguf_type::boolean: return 1;
        case gguf_type::u16: case gguf_type::i16: return 2;
        case gguf_type::u32: case gguf_type::i32: case gguf_type::f32: return 4;
        case gguf_type::u64: case gguf_type::i64: case gguf_type::f64: return 8;
        default: return 0;  // string, array: variable
    }
}

bool valid_type(uint32_t t) { return t <= uint32_t(gguf_type::f64); }

// Bounds-checked little-endian cursor over the mapping.
struct cursor {
    const uint8_t* base;
    size_t size;
    size_t pos = 0;
    std::string error;

    size_t remaining() const { return size - pos; }
    bool fail(std::string msg) {
        if (error.empty()) error = std::move(msg);
        return false;
    }
    template <class T>
    bool read(T* out, const char* what) {
        if (remaining() < sizeof(T))
            return fail(strfmt("unexpected end of file reading %s at byte %zu", what, pos));
        std::memcpy(out, base + pos, sizeof(T));
        pos += sizeof(T);
        return true;
    }
    bool read_string(std::string_view* out, const char* what) {
        uint64_t n = 0;
        if (!read(&n, what)) return false;
        if (n > remaining())
            return fail(strfmt("%s at byte %zu: string length %llu exceeds the %zu bytes left in the file",
                               what, pos - 8, (unsigned long long)n, remaining()));
        *out = std::string_view(reinterpret_cast<const char*>(base + pos), size_t(n));
        pos += size_t(n);
        return true;
    }
};

bool read_scalar(cursor& c, gguf_type t, gguf_value& v) {
    v.type = t;
    switch (t) {
        case gguf_type::u8: { uint8_t x; if (!c.read(&x, "u8 value")) return false; v.u = x; v.i = x; return true; }
        case gguf_type::i8: { int8_t x; if (!c.read(&x, "i8 value")) return false; v.i = x; v.u = uint64_t(x); return true; }
        case gguf_type::u16: { uint16_t x; if (!c.read(&x, "u16 value")) return false; v.u = x; v.i = x; return true; }
        case gguf_type::i16: { int16_t x; if (!c.read(&x, "i16 value")) return false; v.i = x; v.u = uint64_t(x); return true; }
        case gguf_type::u32: { uint32_t x; if (!c.read(&x, "u32 value")) return false; v.u = x; v.i = x; return true; }
        case gguf_type::i32: { int32_t x; if (!c.read(&x, "i32 value")) return false; v.i = x; v.u = uint64_t(x); return true; }
        case gguf_type::u64: { uint64_t x; if (!c.read(&x, "u64 value")) return false; v.u = x; v.i = int64_t(x); return true; }
        case gguf_type::i64: { int64_t x; if (!c.read(&x, "i64 value")) return false; v.i = x; v.u = uint64_t(x); return true; }
        case gguf_type::f32: { float x; if (!c.read(&x, "f32 value")) return false; v.f = x; return true; }
        case gguf_type::f64: { double x; if (!c.read(&x, "f64 value")) return false; v.f = x; return true; }
        case gguf_type::boolean: {
            uint8_t x;
            if (!c.read(&x, "bool value")) return false;
            if (x > 1) return c.fail(strfmt("bool value %u at byte %zu is neither 0 nor 1", x, c.pos - 1));
            v.u = x; v.i = x;
            return true;
        }
        case gguf_type::string: return c.read_string(&v.str, "string value");
        default: return c.fail("internal: not a scalar type");
    }
}

bool read_value(cursor& c, gguf_type t, gguf_value& v) {
    if (t != gguf_type::array) return read_scalar(c, t, v);
    v.type = gguf_type::array;
    uint32_t et = 0;
    if (!c.read(&et, "array element type")) return false;
    if (!valid_type(et)) return c.fail(strfmt("array element type %u is not a GGUF type", et));
    if (gguf_type(et) == gguf_type::array) return c.fail("nested arrays are not supported");
    uint64_t n = 0;
    if (!c.read(&n, "array length")) return false;
    v.elem_type = gguf_type(et);
    v.n_elem = n;
    if (v.elem_type == gguf_type::string) {
        // Each string needs at least its 8-byte length: bound n before reserving.
        if (n > c.remaining() / 8)
            return c.fail(strfmt("string array of %llu elements cannot fit in the %zu bytes left",
                                 (unsigned long long)n, c.remaining()));
        v.elem_strings.resize(size_t(n));
        for (uint64_t k = 0; k < n; ++k)
            if (!c.read_string(&v.elem_strings[size_t(k)], "array string")) return false;
        return true;
    }
    size_t es = scalar_size(v.elem_type);
    if (n > c.remaining() / es)
        return c.fail(strfmt("array of %llu %s elements exceeds the %zu bytes left in the file",
                             (unsigned long long)n, gguf_type_name(v.elem_type), c.remaining()));
    v.elem_data = c.base + c.pos;
    c.pos += size_t(n) * es;
    return true;
}

template <class T>
T load(const uint8_t* p) {
    T x;
    std::memcpy(&x, p, sizeof(T));
    return x;
}

}  // namespace

const char* gguf_type_name(gguf_type t) {
    static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                  "string", "array", "u64", "i64", "f64"};
    return valid_type(uint32_t(t)) ? names[uint32_t(t)] : "invalid";
}

bool gguf_value::is_integer() const {
    switch (type) {
        case gguf_type::u8: case gguf_type::i8: case gguf_type::u16: case gguf_type::i16:
        case gguf_type::u32: case gguf_type::i32: case gguf_type::u64: case gguf_type::i64:
            return true;
        default: return false;
    }
}

std::string gguf_tensor_info::shape_string() const {
    std::string s = "[";
    for (int d = 0; d < n_dims; ++d) s += (d ? ", " : "") + std::to_string(ne[d]);
    return s + "]";
}

result<std::unique_ptr<gguf_file>> gguf_file::open(const std::string& path) {
    auto m = mapped_file::open(path);
    if (!m) return m.error();
    std::unique_ptr<gguf_file> f(new gguf_file());
    f->map_ = std::move(m.value());
    f->base_ = f->map_.data();
    f->size_ = f->map_.size();
    status s = f->parse_all();
    if (!s) return s.with_context(path);
    return f;
}

result<std::unique_ptr<gguf_file>> gguf_file::parse(const uint8_t* data, size_t size) {
    std::unique_ptr<gguf_file> f(new gguf_file());
    f->base_ = data;
    f->size_ = size;
    status s = f->parse_all();
    if (!s) return s;
    return f;
}

status gguf_file::parse_all() {
    cursor c{base_, size_, 0, {}};
    uint32_t magic = 0;
    if (size_ < 4 || !c.read(&magic, "magic")) return status::error("not a GGUF file: shorter than its 4-byte magic");
    if (magic != gguf_magic) {
        char m[5] = {};
        std::memcpy(m, base_, 4);
        for (char& ch : m) if (ch && (ch < 32 || ch > 126)) ch = '?';
        return status::error(strfmt("not a GGUF file: magic is \"%s\", expected \"GGUF\"", m));
    }
    if (!c.read(&version_, "version")) return status::error(c.error);
    if (version_ == 1) return status::error("GGUF version 1 is not supported (re-convert the model to v3)");
    if (version_ != 2 && version_ != 3)
        return status::error(strfmt("unsupported GGUF version %u (supported: 2, 3)", version_));
    uint64_t n_tensors = 0, n_kv = 0;
    if (!c.read(&n_tensors, "tensor count") || !c.read(&n_kv, "metadata count")) return status::error(c.error);
    // Each metadata entry needs >= 12 bytes (key length + type), each tensor info >= 24.
    if (n_kv > c.remaining() / 12)
        return status::error(strfmt("metadata count %llu cannot fit in a %zu-byte file", (unsigned long long)n_kv, size_));
    if (n_tensors > c.remaining() / 24)
        return status::error(strfmt("tensor count %llu cannot fit in a %zu-byte file", (unsigned long long)n_tensors, size_));

    kvs_.reserve(size_t(n_kv));
    for (uint64_t k = 0; k < n_kv; ++k) {
        gguf_kv kv;
        if (!c.read_string(&kv.key, "metadata key")) return status::error(strfmt("metadata entry %llu: %s", (unsigned long long)k, c.error.c_str()));
        uint32_t t = 0;
        if (!c.read(&t, "value type")) return status::error(strfmt("metadata %.*s: %s", int(kv.key.size()), kv.key.data(), c.error.c_str()));
        if (!valid_type(t))
            return status::error(strfmt("metadata %.*s: value type %u is not a GGUF type", int(kv.key.size()), kv.key.data(), t));
        if (!read_value(c, gguf_type(t), kv.value))
            return status::error(strfmt("metadata %.*s: %s", int(kv.key.size()), kv.key.data(), c.error.c_str()));
        if (kv_index_.count(kv.key))
            return status::error(strfmt("metadata key %.*s appears twice", int(kv.key.size()), kv.key.data()));
        kv_index_.emplace(kv.key, kvs_.size());
        kvs_.push_back(std::move(kv));
    }

    if (const gguf_value* a = find("general.alignment")) {
        if (!a->is_integer() || a->type != gguf_type::u32)
            return status::error(strfmt("general.alignment must be a u32, got %s", gguf_type_name(a->type)));
        if (a->u == 0 || (a->u & (a->u - 1)) != 0)
            return status::error(strfmt("general.alignment %llu is not a power of two", (unsigned long long)a->u));
        alignment_ = uint32_t(a->u);
    }

    tensors_.reserve(size_t(n_tensors));
    for (uint64_t k = 0; k < n_tensors; ++k) {
        gguf_tensor_info ti;
        if (!c.read_string(&ti.name, "tensor name")) return status::error(strfmt("tensor %llu: %s", (unsigned long long)k, c.error.c_str()));
        std::string tname(ti.name);
        uint32_t n_dims = 0;
        if (!c.read(&n_dims, "tensor dims")) return status::error("tensor " + tname + ": " + c.error);
        if (n_dims < 1 || n_dims > uint32_t(gguf_max_dims))
            return status::error(strfmt("tensor %s: %u dimensions (expected 1 to %d)", tname.c_str(), n_dims, gguf_max_dims));
        ti.n_dims = int(n_dims);
        int64_t n_el = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            uint64_t ne = 0;
            if (!c.read(&ne, "tensor dim")) return status::error("tensor " + tname + ": " + c.error);
            if (ne == 0 || ne > uint64_t(std::numeric_limits<int64_t>::max()))
                return status::error(strfmt("tensor %s: dimension %u is %llu", tname.c_str(), d, (unsigned long long)ne));
            if (int64_t(ne) > std::numeric_limits<int64_t>::max() / n_el)
                return status::error(strfmt("tensor %s: element count overflows (dimension %u is %llu)", tname.c_str(), d, (unsigned long long)ne));
            ti.ne[d] = int64_t(ne);
            n_el *= int64_t(ne);
        }
        uint32_t type = 0;
        if (!c.read(&type, "tensor type") || !c.read(&ti.offset, "tensor offset")) return status::error("tensor " + tname + ": " + c.error);
        if (type >= dtype_id_limit || !dtype_info(dtype(type)).known)
            return status::error(strfmt("tensor %s: unknown tensor type %u", tname.c_str(), type));
        ti.type = dtype(type);
        const dtype_traits& tr = dtype_info(ti.type);
        if (ti.ne[0] % tr.block_size != 0)
            return status::error(strfmt("tensor %s: row length %lld is not a multiple of the %s block size %lld",
                                        tname.c_str(), (long long)ti.ne[0], tr.name, (long long)tr.block_size));
        uint64_t n_blocks = uint64_t(n_el / tr.block_size);
        if (n_blocks > std::numeric_limits<uint64_t>::max() / uint64_t(tr.type_size))
            return status::error("tensor " + tname + ": byte size overflows");
        ti.n_bytes = n_blocks * uint64_t(tr.type_size);
        if (ti.offset % alignment_ != 0)
            return status::error(strfmt("tensor %s: offset %llu is not a multiple of the alignment %u",
                                        tname.c_str(), (unsigned long long)ti.offset, alignment_));
        if (tensor_index_.count(ti.name)) return status::error("tensor " + tname + " appears twice");
        tensor_index_.emplace(ti.name, tensors_.size());
        tensors_.push_back(ti);
    }

    size_t pad = (alignment_ - c.pos % alignment_) % alignment_;
    data_offset_ = c.pos + pad;
    if (!tensors_.empty() && data_offset_ > size_)
        return status::error(strfmt("file ends at byte %zu, before its tensor data section starts at %zu", size_, data_offset_));
    size_t data_size = size_ > data_offset_ ? size_ - data_offset_ : 0;
    for (auto& ti : tensors_) {
        if (ti.offset > data_size || ti.n_bytes > data_size - ti.offset)
            return status::error(strfmt("tensor %.*s: data [%llu, %llu) lies past the end of the file's %zu-byte data section (truncated file?)",
                                        int(ti.name.size()), ti.name.data(), (unsigned long long)ti.offset,
                                        (unsigned long long)(ti.offset + ti.n_bytes), data_size));
        ti.data = base_ + data_offset_ + ti.offset;
    }
    return status::ok();
}

const gguf_value* gguf_file::find(std::string_view key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kvs_[it->second].value;
}

const gguf_tensor_info* gguf_file::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
status missing(std::string_view key) { return status::error("missing metadata key " + std::string(key)); }
status wrong(std::string_view key, const char* want, gguf_type got) {
    return status::error(strfmt("metadata %.*s: expected %s, got %s", int(key.size()), key.data(), want, gguf_type_name(got)));
}
}  // namespace

result<std::optional<int64_t>> gguf_file::get_int_opt(std::string_view key) const {
    const gguf_value* v = find(key);
    if (!v) return std::optional<int64_t>();
    if (!v->is_integer()) return wrong(key, "an integer", v->type);
    if (v->type == gguf_type::u64 && v->u > uint64_t(std::numeric_limits<int64_t>::max()))
        return status::error(strfmt("metadata %.*s: value %llu is too large", int(key.size()), key.data(), (unsigned long long)v->u));
    return std::optional<int64_t>(v->i);
}

result<std::optional<double>> gguf_file::get_float_opt(std::string_view key) const {
    const gguf_value* v = find(key);
    if (!v) return std::optional<double>();
    if (v->is_float()) return std::optional<double>(v->f);
    if (v->is_integer()) return std::optional<double>(double(v->i));
    return wrong(key, "a number", v->type);
}

result<std::optional<std::string>> gguf_file::get_string_opt(std::string_view key) const {
    const gguf_value* v = find(key);
    if (!v) return std::optional<std::string>();
    if (v->type != gguf_type::string) return wrong(key, "a string", v->type);
    return std::optional<std::string>(std::string(v->str));
}

result<std::optional<bool>> gguf_file::get_bool_opt(std::string_view key) const {
    const gguf_value* v = find(key);
    if (!v) return std::optional<bool>();
    if (v->type != gguf_type::boolean) return wrong(key, "a bool", v->type);
    return std::optional<bool>(v->u != 0);
}

template <class T>
static result<T> required(result<std::optional<T>> r, std::string_view key) {
    if (!r) return r.error();
    if (!r.value()) return missing(key);
    return *r.value();
}

result<std::string> gguf_file::get_string(std::string_view key) const { return required(get_string_opt(key), key); }
result<int64_t> gguf_file::get_int(std::string_view key) const { return required(get_int_opt(key), key); }
result<double> gguf_file::get_float(std::string_view key) const { return required(get_float_opt(key), key); }
result<bool> gguf_file::get_bool(std::string_view key) const { return required(get_bool_opt(key), key); }

result<const std::vector<std::string_view>*> gguf_file::get_string_array(std::string_view key) const {
    const gguf_value* v = find(key);
    if (!v) return missing(key);
    if (v->type != gguf_type::array || v->elem_type != gguf_type::string) return wrong(key, "an array of strings", v->type == gguf_type::array ? v->elem_type : v->type);
    return &v->elem_strings;
}

result<std::vector<float>> gguf_file::get_f32_array(std::string_view key) const {
    const gguf_value* v = find(key);
    if (!v) return missing(key);
    if (v->type != gguf_type::array || (v->elem_type != gguf_type::f32 && v->elem_type != gguf_type::f64))
        return wrong(key, "an array of floats", v->type == gguf_type::array ? v->elem_type : v->type);
    std::vector<float> out(size_t(v->n_elem));
    for (size_t k = 0; k < out.size(); ++k)
        out[k] = v->elem_type == gguf_type::f32 ? load<float>(v->elem_data + 4 * k) : float(load<double>(v->elem_data + 8 * k));
    return out;
}

result<std::vector<int64_t>> gguf_file::get_int_array(std::string_view key) const {
    const gguf_value* v = find(key);
    if (!v) return missing(key);
    if (v->type != gguf_type::array) return wrong(key, "an array of integers", v->type);
    std::vector<int64_t> out(size_t(v->n_elem));
    const uint8_t* p = v->elem_data;
    for (size_t k = 0; k < out.size(); ++k) {
        switch (v->elem_type) {
            case gguf_type::u8: out[k] = load<uint8_t>(p + k); break;
            case gguf_type::i8: out[k] = load<int8_t>(p + k); break;
            case gguf_type::u16: out[k] = load<uint16_t>(p + 2 * k); break;
            case gguf_type::i16: out[k] = load<int16_t>(p + 2 * k); break;
            case gguf_type::u32: out[k] = load<uint32_t>(p + 4 * k); break;
            case gguf_type::i32: out[k] = load<int32_t>(p + 4 * k); break;
            case gguf_type::u64: out[k] = int64_t(load<uint64_t>(p + 8 * k)); break;
            case gguf_type::i64: out[k] = load<int64_t>(p + 8 * k); break;
            case gguf_type::boolean: out[k] = load<uint8_t>(p + k); break;
            default: return wrong(key, "an array of integers", v->elem_type);
        }
    }
    return out;
}

}  // namespace kvs
