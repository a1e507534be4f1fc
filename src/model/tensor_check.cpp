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

result<lm_ends> bind_lm_ends(const gguf_file& f, int64_t n_embd, int64_t* n_vocab) {
    lm_ends ends;
    const gguf_tensor_info* emb = f.find_tensor("token_embd.weight");
    if (!emb) return status::error("missing tensor token_embd.weight");
    if (emb->n_dims != 2 || emb->ne[0] != n_embd)
        return status::error(strfmt("tensor token_embd.weight: expected shape [%lld, n_vocab], got %s", (long long)n_embd,
                                    emb->shape_string().c_str()));
    if (*n_vocab == 0) *n_vocab = emb->ne[1];
    auto e = want_tensor(f, "token_embd.weight", {n_embd, *n_vocab}, false);
    if (!e) return e.error();
    ends.token_embd = e.value();
    auto on = want_tensor(f, "output_norm.weight", {n_embd}, true);
    if (!on) return on.error();
    ends.output_norm = reinterpret_cast<const float*>(on.value()->data);
    if (f.find_tensor("output.weight")) {
        auto out = want_tensor(f, "output.weight", {n_embd, *n_vocab}, false);
        if (!out) return out.error();
        ends.output = weight_view_of(out.value());
    } else {
        ends.output = weight_view_of(ends.token_embd);
        ends.tied = true;
    }
    return ends;
}

}  // namespace kvs
