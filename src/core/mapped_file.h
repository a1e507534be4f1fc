// A read-only memory mapping of a whole file. Move-only; unmapped on destruction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace kvs {

class mapped_file {
public:
    mapped_file() = default;
    ~mapped_file();
    mapped_file(mapped_file&& other) noexcept;
    mapped_file& operator=(mapped_file&& other) noexcept;
    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;

    // Errors name the path and the system's reason ("model.gguf: No such file or directory").
    static result<mapped_file> open(const std::string& path);

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }

private:
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

}  // namespace kvs
