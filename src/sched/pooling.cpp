#include "sched/pooling.h"

#include <string>

namespace kvs {

bool pooling_from_name(std::string_view name, pooling_type* out) {
    if (name == "mean") *out = pooling_type::mean;
    else if (name == "cls") *out = pooling_type::cls;
    else if (name == "last") *out = pooling_type::last;
    else return false;
    return true;
}

const char* pooling_name(pooling_type p) {
    switch (p) {
        case pooling_type::mean: return "mean";
        case pooling_type::cls: return "cls";
        case pooling_type::last: return "last";
    }
    return "last";
}

pooling_type pooling_of_model(const gguf_file& f, std::string_view arch) {
    const std::string key = std::string(arch) + ".pooling_type";
    if (!f.find(key)) return pooling_type::last;
    auto v = f.get_int(key);
    if (!v) return pooling_type::last;
    switch (v.value()) {
        case 1: return pooling_type::mean;
        case 2: return pooling_type::cls;
        case 3: return pooling_type::last;
        default: return pooling_type::last;
    }
}

}  // namespace kvs
