// Greedy-by-size offset assignment over an arena (see activation_plan.h).
#include "model/activation_plan.h"

#include <algorithm>
#include <numeric>

namespace kvs {

namespace {

size_t align_up(size_t n, size_t alignment) { return (n + alignment - 1) & ~(alignment - 1); }

size_t aligned_sum(const std::vector<activation_buffer>& buffers, size_t alignment) {
    size_t sum = 0;
    for (const activation_buffer& b : buffers) sum += align_up(b.bytes, alignment);
    return sum;
}

}  // namespace

bool lifetimes_overlap(const activation_buffer& a, const activation_buffer& b) {
    for (const live_range& ra : a.live)
        for (const live_range& rb : b.live)
            if (ra.first <= rb.last && rb.first <= ra.last) return true;
    return false;
}

activation_plan plan_activations(const std::vector<activation_buffer>& buffers, size_t alignment) {
    const size_t n = buffers.size();
    activation_plan plan;
    plan.offsets.assign(n, 0);
    plan.sum_bytes = aligned_sum(buffers, alignment);

    // Largest first; equal sizes in list order.
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return buffers[a].bytes > buffers[b].bytes; });

    struct extent {
        size_t begin, end;  // bytes [begin, end)
    };
    std::vector<size_t> placed;
    std::vector<extent> taken;
    size_t top = 0;
    for (size_t i : order) {
        const activation_buffer& buf = buffers[i];
        if (buf.bytes == 0) continue;  // occupies nothing: offset 0
        // The bytes of the placed buffers live at the same time as this one, lowest first.
        taken.clear();
        for (size_t j : placed)
            if (lifetimes_overlap(buf, buffers[j])) taken.push_back({plan.offsets[j], plan.offsets[j] + buffers[j].bytes});
        std::sort(taken.begin(), taken.end(), [](const extent& a, const extent& b) { return a.begin < b.begin; });
        // The lowest aligned offset before, between or after them where the buffer fits.
        size_t offset = 0;
        for (const extent& e : taken) {
            if (offset + buf.bytes <= e.begin) break;
            offset = std::max(offset, align_up(e.end, alignment));
        }
        plan.offsets[i] = offset;
        top = std::max(top, offset + buf.bytes);
        placed.push_back(i);
    }
    plan.arena_bytes = align_up(top, alignment);
    return plan;
}

activation_plan plan_disjoint(const std::vector<activation_buffer>& buffers, size_t alignment) {
    activation_plan plan;
    plan.offsets.reserve(buffers.size());
    size_t offset = 0;
    for (const activation_buffer& b : buffers) {
        plan.offsets.push_back(b.bytes == 0 ? 0 : offset);
        offset += align_up(b.bytes, alignment);
    }
    plan.arena_bytes = offset;
    plan.sum_bytes = offset;
    return plan;
}

}  // namespace kvs
