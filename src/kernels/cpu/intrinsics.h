// The x86 intrinsics for the per-ISA kernel files (*_avx2.cpp, *_avx512.cpp), included inside
// their ISA guard. GCC 12's intrinsic headers build "undefined" vectors as `__m512 y = y;`,
// which trips -Wuninitialized once inlined (GCC bug 105593); the warning is about the header,
// not the kernels, so it is silenced for the including file. Declarations only (see the ODR
// rule in isa.h).
#pragma once

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace kvs::cpu::detail {

// Distance of the software prefetch in the q4_0/q8_0 interleaved16 kernels, used for tiles of
// 4 or more activation rows. With few rows a weight chunk is reused only a few times, so its
// first pass streams from DRAM faster than the hardware prefetcher alone keeps up with (batched
// decode of 16 rows: +9%); with many rows the chunk is in L2 and the prefetches are cheap hits.
// A single row (decode) already streams at the DRAM rate, and the k-quant and bf16 kernels
// (more work per weight byte) measured slower with it (-9%, -25%): they leave the stream to
// the hardware prefetcher.
inline constexpr size_t weight_prefetch_distance = 4096;

// Prefetch the Bytes of weight stream that start `weight_prefetch_distance` after `p` (a block
// column of a group: the next columns and groups follow it contiguously).
template <size_t Bytes>
inline void prefetch_weights_ahead(const uint8_t* p) {
#pragma GCC unroll 64
    for (size_t off = 0; off < Bytes; off += 64)
        _mm_prefetch(reinterpret_cast<const char*>(p + weight_prefetch_distance + off), _MM_HINT_T0);
}

}  // namespace kvs::cpu::detail
