// Repacking matrices into the interleaved16 layout at load (weight_repack.h).
#include "model/weight_repack.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "core/thread_pool.h"
#include "kernels/cpu/autotune.h"
#include "kernels/cpu/interleave.h"

namespace kvs {

void repacked_weights::free_deleter::operator()(void* p) const { std::free(p); }

void repacked_weights::repack(const std::vector<repack_item>& items, weight_repack mode) {
    if (mode == weight_repack::never || (mode == weight_repack::automatic && !cpu::interleave_preferred())) return;
    // automatic: only the dtypes the matmul tuning leaves repacked (all unless tuned otherwise).
    const cpu::matmul_tuning_table& tuning = cpu::matmul_tuning_active();
    auto whole = [](const repack_item& it) {  // the (n_rows, n_in) matrix repacked
        cpu::weight_view v = *it.view;
        v.n_out = it.n_rows;
        return v;
    };
    auto wanted = [&](const repack_item& it) {
        const cpu::weight_view& v = *it.view;
        if (!v.data || v.layout != cpu::weight_layout::row_major) return false;
        if (it.n_rows != v.n_out && (v.n_out % cpu::interleave_rows != 0 || it.n_rows % v.n_out != 0)) return false;
        return cpu::can_interleave(whole(it)) && (mode == weight_repack::always || tuning.repack_of(v.type));
    };
    // One allocation, aligned to 2 MiB and advised for transparent huge pages: fewer page
    // faults while repacking and fewer TLB misses when decode streams the weights.
    constexpr size_t align = size_t(2) << 20;
    size_t total = 0;
    std::vector<size_t> offsets;
    std::vector<bool> chosen;
    for (const repack_item& it : items) {
        offsets.push_back(total);
        chosen.push_back(wanted(it));
        if (chosen.back()) total += (cpu::interleaved_bytes(whole(it)) + 63) / 64 * 64;
    }
    if (total == 0) return;
    total = (total + align - 1) / align * align;
    void* mem = std::aligned_alloc(align, total);
    if (!mem) return;
#if defined(MADV_HUGEPAGE)
    madvise(mem, total, MADV_HUGEPAGE);
#endif
    mem_.reset(static_cast<uint8_t*>(mem));
    bytes_ = total;
    // Jobs of up to 256 rows, spread over the cores (repacking is a memory-bound copy).
    struct job {
        size_t item;
        int64_t row0, row1;
    };
    std::vector<job> jobs;
    for (size_t i = 0; i < items.size(); ++i) {
        if (!chosen[i]) continue;
        for (int64_t r = 0; r < items[i].n_rows; r += 256) jobs.push_back({i, r, std::min(items[i].n_rows, r + 256)});
    }
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    thread_pool pool(int(std::max(1u, std::min(8u, std::thread::hardware_concurrency()))));
    pool.run(int64_t(jobs.size()), [&](int64_t j, int) {
        const job& jb = jobs[size_t(j)];
        const repack_item& it = items[jb.item];
        const cpu::weight_view v = whole(it);
        cpu::interleave(v, mem_.get() + offsets[jb.item], jb.row0, jb.row1);
        // The file's copy of these rows is no longer read: unmap its pages from this process
        // now, so that both copies are never resident together. Later reads, if any, fault the
        // pages back in from the file.
        if (it.keep_file_rows) return;
        const size_t row_bytes = dtype_row_bytes(v.type, v.n_in);
        const uintptr_t begin = reinterpret_cast<uintptr_t>(v.data) + size_t(jb.row0) * row_bytes;
        const uintptr_t end = reinterpret_cast<uintptr_t>(v.data) + size_t(jb.row1) * row_bytes;
        const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
        if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
    });
    for (size_t i = 0; i < items.size(); ++i) {
        if (!chosen[i]) continue;
        items[i].view->data = mem_.get() + offsets[i];
        items[i].view->layout = cpu::weight_layout::interleaved16;
    }
}

}  // namespace kvs
