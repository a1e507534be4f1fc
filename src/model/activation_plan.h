// Activation memory planning (as in TurboTransformers): the scratch buffers of a forward pass
// share one arena, a buffer reusing the bytes of buffers that are dead while it is live.
//
// A program is a sequence of points (the steps of a forward pass); a buffer is live over the
// points where it holds a value still to be read, given as closed ranges [first, last]. A
// loop body (the layers) is one run of points: a buffer carried from one iteration to the next
// is live over the whole body. Two buffers conflict when some point lies in a live range of
// both; conflicting buffers get disjoint bytes, the others may share them.
//
// plan_activations places buffers greedily, each at the lowest aligned offset where it
// overlaps no already placed buffer it conflicts with, and tries several orders: largest
// first, longest-lived first, by first use, by bytes × lifetime, then up to 512 seeded
// shuffles. It keeps the smallest arena and stops as soon as one reaches the lower bound, the
// most bytes live at one point (then the plan is optimal). Deterministic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvs {

// Program points [first, last], both included.
struct live_range {
    int32_t first = 0, last = 0;
};

struct activation_buffer {
    std::string name;              // for diagnostics and tests
    size_t bytes = 0;
    std::vector<live_range> live;  // usually one range; several where the buffer is dead between uses
};

// Where each buffer lies in one arena.
struct activation_plan {
    std::vector<size_t> offsets;  // one per buffer, in the order given; multiples of the alignment
    size_t arena_bytes = 0;       // the arena: the end of the highest buffer, rounded up to the alignment
    size_t sum_bytes = 0;         // every buffer apart (each rounded up to the alignment): the arena without sharing
};

constexpr size_t activation_alignment = 64;

// Whether a point lies in a live range of both (empty lists conflict with nothing).
bool lifetimes_overlap(const activation_buffer& a, const activation_buffer& b);

// The most bytes (each buffer rounded up to the alignment) live at one point: no arena is
// smaller.
size_t live_peak_bytes(const std::vector<activation_buffer>& buffers, size_t alignment = activation_alignment);

// Offsets such that conflicting buffers never share a byte (see above). alignment: a power
// of two.
activation_plan plan_activations(const std::vector<activation_buffer>& buffers, size_t alignment = activation_alignment);

// Every buffer at its own bytes, one after the other in list order (arena_bytes == sum_bytes):
// the layout without sharing, for comparison and debugging.
activation_plan plan_disjoint(const std::vector<activation_buffer>& buffers, size_t alignment = activation_alignment);

}  // namespace kvs
