// libFuzzer target for the GGUF reader: any byte string must parse or fail with a message,
// never crash or read outside the buffer. When a file parses, every value and every byte of
// every tensor is touched (and decoded where kvserve supports the dtype), so a view that
// points outside the input shows up under AddressSanitizer. The model hyper-parameters are
// read from it too (llama, qwen2, mistral, yoco): an error must say what is wrong, and what is
// accepted must hold the invariants the loader and the forward pass rely on.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "gguf/gguf.h"
#include "model/hparams.h"

namespace {

volatile uint64_t g_sink;  // keeps the reads from being optimized away

void touch_value(const kvs::gguf_file& f, const kvs::gguf_kv& kv) {
    uint64_t h = kv.key.size() + kv.value.u + uint64_t(kv.value.i);
    for (char c : kv.key) h = h * 31 + uint8_t(c);
    for (char c : kv.value.str) h = h * 31 + uint8_t(c);
    for (auto s : kv.value.elem_strings)
        for (char c : s) h = h * 31 + uint8_t(c);
    // The typed getters must agree with the structure and never fail other than by message.
    (void)f.get_int_opt(kv.key);
    (void)f.get_float_opt(kv.key);
    (void)f.get_string_opt(kv.key);
    (void)f.get_bool_opt(kv.key);
    if (kv.value.type == kvs::gguf_type::array) {
        if (auto a = f.get_int_array(kv.key); a.is_ok())
            for (int64_t x : a.value()) h += uint64_t(x);
        if (auto a = f.get_f32_array(kv.key); a.is_ok())
            for (float x : a.value()) h += uint64_t(x != x);
        (void)f.get_string_array(kv.key);
    }
    g_sink = g_sink + h;
}

void touch_tensor(const kvs::gguf_tensor_info& t) {
    uint64_t h = 0;
    for (uint64_t k = 0; k < t.n_bytes; ++k) h += t.data[k];
    (void)t.shape_string();
    // Decode the first rows of supported types (bounded, so huge tensors stay fast).
    const kvs::dtype_traits& tr = kvs::dtype_info(t.type);
    if (tr.supported && t.ne[0] <= 4096) {
        std::vector<float> row(size_t(t.ne[0]));
        size_t row_bytes = kvs::dtype_row_bytes(t.type, t.ne[0]);
        int64_t n_rows = t.n_elements() / t.ne[0];
        for (int64_t r = 0; r < n_rows && r < 4; ++r)
            if (kvs::dequantize_row(t.type, t.data + size_t(r) * row_bytes, row.data(), t.ne[0])) h += uint64_t(row[0] != row[0]);
    }
    g_sink = g_sink + h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // An exactly-sized copy, so any over-read is a heap-buffer-overflow ASan reports.
    std::unique_ptr<uint8_t[]> buf(new uint8_t[size ? size : 1]);
    if (size) std::memcpy(buf.get(), data, size);
    auto f = kvs::gguf_file::parse(buf.get(), size);
    if (!f.is_ok()) {
        if (f.message().empty()) __builtin_trap();  // every error must say what is wrong
        return 0;
    }
    const kvs::gguf_file& g = *f.value();
    for (const auto& kv : g.kvs()) {
        if (g.find(kv.key) == nullptr) __builtin_trap();
        touch_value(g, kv);
    }
    for (const auto& t : g.tensors()) {
        if (g.find_tensor(t.name) == nullptr) __builtin_trap();
        if (t.data < buf.get() || t.n_bytes > size || t.data + t.n_bytes > buf.get() + size) __builtin_trap();
        touch_tensor(t);
    }
    auto hp = kvs::model_hparams::from_gguf(g);
    if (!hp.is_ok()) {
        if (hp.message().empty()) __builtin_trap();
        return 0;
    }
    const kvs::model_hparams& h = hp.value();
    if (h.n_embd < 1 || h.n_layer < 1 || h.n_ff < 1 || h.n_head < 1 || h.n_head_kv < 1 || h.n_head % h.n_head_kv != 0) __builtin_trap();
    if (h.head_dim < 2 || h.head_dim % 2 != 0 || h.n_rot < 2 || h.n_rot > h.head_dim || h.n_rot % 2 != 0) __builtin_trap();
    if (!(h.rms_eps > 0 && h.rms_eps < 1) || !std::isfinite(h.rope_freq_base) || !(h.rope_freq_base > 1)) __builtin_trap();
    if (!std::isfinite(h.rope_freq_scale) || !(h.rope_freq_scale > 0)) __builtin_trap();
    if (h.arch == "yoco" && (h.n_layer_self < 1 || h.n_layer_self >= h.n_layer || h.sliding_window < 1)) __builtin_trap();
    if (h.arch == "deepseek2") {
        // The latent group and the absorbed queries rely on these.
        if (!h.deepseek2() || h.q_lora < 0 || h.v_head < 1 || h.n_rot >= h.head_dim || h.n_head_kv != h.n_head) __builtin_trap();
        if (h.n_layer_dense_lead < 0 || h.n_layer_dense_lead > h.n_layer) __builtin_trap();
        if (h.n_layer_dense_lead < h.n_layer &&
            (h.n_expert < 1 || h.n_expert_used < 1 || h.n_expert_used > h.n_expert || h.n_ff_exp < 1 || h.n_expert_shared < 0 ||
             !(h.expert_weights_scale > 0) || !std::isfinite(h.expert_weights_scale)))
            __builtin_trap();
        if (h.rope_yarn && (h.yarn_orig_ctx < 1 || !std::isfinite(h.yarn_log_mul) || !(h.rope_freq_scale <= 1))) __builtin_trap();
    }
    return 0;
}
