// Repacking a model's matrices at load into the interleaved16 layout (kernels/cpu/interleave.h),
// shared by every model family: one owned allocation holds the copies, the views are pointed at
// them, and the file's pages of the repacked rows are released so both copies are never resident.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cpu/ops.h"
#include "model/language_model.h"

namespace kvs {

// One matrix to repack. `view` describes what the forward pass multiplies by; `n_rows` is the
// rows to repack from view->data on — view->n_out for a plain matrix, n_out · n_stack for a
// stack of matrices laid one after another (GGUF's 3-D expert and per-head tensors), which is
// repacked as one (n_rows, n_in) matrix: its 16-row groups never straddle two members when
// n_out is a multiple of 16, so every member's view stays valid at the row-major offset.
// keep_file_rows: the file's rows are still read elsewhere (tied embeddings), never released.
struct repack_item {
    cpu::weight_view* view = nullptr;
    int64_t n_rows = 0;
    bool keep_file_rows = false;
};

class repacked_weights {
public:
    // Repacks the items mode wants: none for never; under automatic only when the CPU prefers
    // the layout (cpu::interleave_preferred) and the active matmul tuning keeps the dtype
    // repacked; always: every item that can be. An item can be when cpu::can_interleave holds
    // for its (n_rows, n_in) matrix and, for a stack, n_out is a multiple of 16. Items whose
    // views are changed get data pointing into this object and layout interleaved16; others
    // are left as they were. Out of memory leaves every view as it was (slower, same results).
    void repack(const std::vector<repack_item>& items, weight_repack mode);
    // Bytes of the repacked copies (0 when none were made).
    size_t bytes() const { return bytes_; }

private:
    struct free_deleter {
        void operator()(void* p) const;
    };
    std::unique_ptr<uint8_t, free_deleter> mem_;  // 2 MiB aligned, each copy 64-byte aligned
    size_t bytes_ = 0;
};

}  // namespace kvs
