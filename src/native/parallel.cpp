// A loop on libtorch's own intra-op threads. The CPU fast path's Adam update is a Rust loop over
// the whole parameter buffer; on one thread it is a large part of a step, and a second Rust
// thread would fight libgomp's workers, which spin on the other cores between libtorch's
// parallel regions. at::parallel_for hands the halves to those very workers (the build links
// the wheel's own libgomp, so there is one OpenMP pool in the process).
//
// The body is a Rust `extern "C"` function: it cannot unwind (a panic aborts), so the only
// exceptions are libtorch's own, returned as a malloc'd message the caller frees.

#include "shim.h"

#include <ATen/Parallel.h>

#include <cstdint>

extern "C" char* smtrain_parallel_for(int64_t n, int64_t grain,
                                      void (*body)(void*, int64_t, int64_t), void* ctx) {
  try {
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { body(ctx, begin, end); });
    return nullptr;
  }
  SMTRAIN_CATCH
}
