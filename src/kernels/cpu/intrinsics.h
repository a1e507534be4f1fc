// The x86 intrinsics for the per-ISA kernel files (*_avx2.cpp, *_avx512.cpp), included inside
// their ISA guard. GCC 12's intrinsic headers build "undefined" vectors as `__m512 y = y;`,
// which trips -Wuninitialized once inlined (GCC bug 105593); the warning is about the header,
// not the kernels, so it is silenced for the including file. Declarations only (see the ODR
// rule in isa.h).
#pragma once

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

