// Binding GGUF tensors to weights (tensor_check.h).
#include "model/tensor_check.h"

namespace kvs {

// Checks a tensor's presence, dims (GGUF order: ne[0] contiguous) and dtype.
result<const gguf_tensor_info*> want_tensor(const gguf_file& f, const std::string& name, std::vector<int64_t> ne, bool need_float) {
    const gguf_tensor_info* t = f.find_tensor(name);
    if (!t) return status::error("missing tensor " + name);
    bool ok = t->n_dims == int(ne.size());
    for (size_t d = 0; ok && d < ne.size(); ++d) ok = t->ne[d] == ne[d];
    if (!ok) {
        std::string expect = "[";
        for (size_t d = 0; d < ne.size(); ++d) expect += (d ? ", " : "") + std::to_string(ne[d]);
        return status::error("tensor " + name + ": expected shape " + expect + "], got " + t->shape_string());
    }
    if (need_float && t->type != dtype::f32)
        return status::error("tensor " + name + ": expected f32, got " + dtype_name(t->type));
    if (!dtype_info(t->type).supported)
        return status::error("tensor " + name + ": weight type " + dtype_name(t->type) + " is not supported yet");
    return t;
}

cpu::weight_view weight_view_of(const gguf_tensor_info* t) {
    cpu::weight_view w;
    w.data = t->data;
    w.type = t->type;
    w.n_in = t->ne[0];
    w.n_out = t->ne[1];
    return w;
}

}  // namespace kvs
