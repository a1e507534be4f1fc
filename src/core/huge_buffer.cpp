#include "core/huge_buffer.h"

#include <sys/mman.h>

#include <cstdlib>

namespace kvs {

void huge_buffer_deleter::operator()(uint8_t* p) const {
    if (!p) return;
    if (mapped > 0) munmap(base, mapped);
    else std::free(p);
}

huge_buffer make_huge_buffer(size_t bytes) {
    constexpr size_t huge = size_t(2) << 20;
    if (bytes == 0) bytes = 1;
    if (bytes >= huge) {
        // Over-map by one huge page and start at the first 2 MiB boundary inside.
        const size_t mapped = bytes + huge;
        void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base != MAP_FAILED) {
            const uintptr_t start = (reinterpret_cast<uintptr_t>(base) + huge - 1) / huge * huge;
#if defined(MADV_HUGEPAGE)
            madvise(reinterpret_cast<void*>(start), bytes, MADV_HUGEPAGE);
#endif
            return huge_buffer(reinterpret_cast<uint8_t*>(start), huge_buffer_deleter{base, mapped});
        }
    }
    return huge_buffer(static_cast<uint8_t*>(std::calloc(bytes, 1)), huge_buffer_deleter{});
}

}  // namespace kvs
