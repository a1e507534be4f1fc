// Fixture lookup for fuzz targets that load real vocabularies or templates once at start-up:
// $KVSERVE_SHARED, else the shared/ folder beside the checkout (as the tests find it).
#pragma once

#include <cstdlib>
#include <string>

namespace kvs::fuzz {

inline std::string shared_dir() {
    if (const char* env = std::getenv("KVSERVE_SHARED"); env && *env) return env;
    return std::string(KVSERVE_SOURCE_DIR) + "/../shared";
}

}  // namespace kvs::fuzz
