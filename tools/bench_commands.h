// Sub-benchmarks of `kvserve bench` (dispatched on its first argument).
#pragma once

namespace kvs::tools {

int bench_batched(int argc, char** argv);  // kvserve bench batched ...
int bench_serve(int argc, char** argv);    // kvserve bench serve ...
int bench_soak(int argc, char** argv);     // kvserve bench soak ...

}  // namespace kvs::tools
