// Large zero-initialized buffers backed by transparent huge pages where the kernel allows them
// (the KV cache's pools). The memory is mapped anonymously, so it is zero and committed only as
// it is touched, aligned to 2 MiB and advised MADV_HUGEPAGE: a KV page read at random (a Quest
// selection, a pool whose pages were reused in any order) then costs no TLB miss per 4 KiB.
// Without huge pages (or mmap) it falls back to calloc; the contents are the same either way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace kvs {

struct huge_buffer_deleter {
    void* base = nullptr;  // the whole mapping (the buffer starts at an aligned offset in it)
    size_t mapped = 0;     // its length; 0: the buffer came from calloc
    void operator()(uint8_t* p) const;
};
using huge_buffer = std::unique_ptr<uint8_t[], huge_buffer_deleter>;

// `bytes` zeroed bytes (null when they cannot be had).
huge_buffer make_huge_buffer(size_t bytes);

}  // namespace kvs
