// Offset assignment over an arena by greedy placement in several orders (see activation_plan.h).
#include "model/activation_plan.h"

#include <algorithm>
#include <climits>
#include <cstdint>
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

namespace {

// Greedy placement in `order`: each buffer at the lowest aligned offset clear of the placed
// buffers it conflicts with. Returns the arena's top (unaligned end of the highest buffer).
size_t place_in_order(const std::vector<activation_buffer>& buffers, const std::vector<size_t>& order, size_t alignment,
                      std::vector<size_t>& offsets) {
    struct extent {
        size_t begin, end;  // bytes [begin, end)
    };
    offsets.assign(buffers.size(), 0);
    std::vector<size_t> placed;
    std::vector<extent> taken;
    size_t top = 0;
    for (size_t i : order) {
        const activation_buffer& buf = buffers[i];
        if (buf.bytes == 0) continue;  // occupies nothing: offset 0
        // The bytes of the placed buffers live at the same time as this one, lowest first.
        taken.clear();
        for (size_t j : placed)
            if (lifetimes_overlap(buf, buffers[j])) taken.push_back({offsets[j], offsets[j] + buffers[j].bytes});
        std::sort(taken.begin(), taken.end(), [](const extent& a, const extent& b) { return a.begin < b.begin; });
        // The lowest aligned offset before, between or after them where the buffer fits.
        size_t offset = 0;
        for (const extent& e : taken) {
            if (offset + buf.bytes <= e.begin) break;
            offset = std::max(offset, align_up(e.end, alignment));
        }
        offsets[i] = offset;
        top = std::max(top, offset + buf.bytes);
        placed.push_back(i);
    }
    return top;
}

int32_t first_use(const activation_buffer& b) {
    int32_t f = INT32_MAX;
    for (const live_range& r : b.live) f = std::min(f, r.first);
    return f;
}

int64_t live_length(const activation_buffer& b) {
    int64_t n = 0;
    for (const live_range& r : b.live) n += int64_t(r.last) - int64_t(r.first) + 1;
    return n;
}

}  // namespace

size_t live_peak_bytes(const std::vector<activation_buffer>& buffers, size_t alignment) {
    // The live sum only rises where a range starts: check those points.
    size_t peak = 0;
    for (const activation_buffer& at : buffers)
        for (const live_range& start : at.live) {
            size_t live = 0;
            for (const activation_buffer& b : buffers)
                for (const live_range& r : b.live)
                    if (r.first <= start.first && start.first <= r.last) {
                        live += align_up(b.bytes, alignment);
                        break;
                    }
            peak = std::max(peak, live);
        }
    return peak;
}

activation_plan plan_activations(const std::vector<activation_buffer>& buffers, size_t alignment) {
    const size_t n = buffers.size();
    activation_plan plan;
    plan.sum_bytes = aligned_sum(buffers, alignment);
    const size_t bound = live_peak_bytes(buffers, alignment);

    std::vector<size_t> identity(n);
    std::iota(identity.begin(), identity.end(), size_t(0));
    auto sorted_by = [&](auto before) {
        std::vector<size_t> o = identity;
        std::stable_sort(o.begin(), o.end(), before);
        return o;
    };
    // The orders tried, best kept (ties: the earlier order): largest first; longest-lived
    // first; by first use, larger first; by bytes × lifetime; then seeded shuffles until the
    // arena reaches the bound (the most bytes live at one point) or the tries run out.
    std::vector<std::vector<size_t>> orders = {
        sorted_by([&](size_t a, size_t b) { return buffers[a].bytes > buffers[b].bytes; }),
        sorted_by([&](size_t a, size_t b) { return live_length(buffers[a]) > live_length(buffers[b]); }),
        sorted_by([&](size_t a, size_t b) {
            return first_use(buffers[a]) != first_use(buffers[b]) ? first_use(buffers[a]) < first_use(buffers[b])
                                                                   : buffers[a].bytes > buffers[b].bytes;
        }),
        sorted_by([&](size_t a, size_t b) {
            return double(buffers[a].bytes) * double(live_length(buffers[a])) > double(buffers[b].bytes) * double(live_length(buffers[b]));
        }),
    };
    constexpr int shuffles = 512;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    auto next = [&rng] {  // xorshift64*: the same plan on every machine and run
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        return rng * 0x2545f4914f6cdd1dull;
    };
    std::vector<size_t> offsets;
    size_t best_top = SIZE_MAX;
    for (int attempt = 0; attempt < int(orders.size()) + shuffles; ++attempt) {
        std::vector<size_t> order;
        if (attempt < int(orders.size())) {
            order = orders[size_t(attempt)];
        } else {
            order = orders[0];
            for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[size_t(next() % i)]);
        }
        const size_t top = place_in_order(buffers, order, alignment, offsets);
        if (align_up(top, alignment) < best_top) {
            best_top = align_up(top, alignment);
            plan.offsets = offsets;
        }
        if (best_top <= bound) break;
    }
    if (plan.offsets.empty()) plan.offsets.assign(n, 0);
    plan.arena_bytes = best_top == SIZE_MAX ? 0 : best_top;
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
