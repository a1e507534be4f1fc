#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace kvs {

mapped_file::~mapped_file() {
    if (data_ && size_) munmap(const_cast<uint8_t*>(data_), size_);
}

mapped_file::mapped_file(mapped_file&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

mapped_file& mapped_file::operator=(mapped_file&& other) noexcept {
    if (this != &other) {
        if (data_ && size_) munmap(const_cast<uint8_t*>(data_), size_);
        data_ = std::exchange(other.data_, nullptr);
        size_ = std::exchange(other.size_, 0);
    }
    return *this;
}

result<mapped_file> mapped_file::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return status::error(path + ": " + std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        return status::error(path + ": " + std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return status::error(path + ": not a regular file");
    }
    mapped_file m;
    m.size_ = size_t(st.st_size);
    if (m.size_ > 0) {
        void* p = mmap(nullptr, m.size_, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            ::close(fd);
            m.size_ = 0;
            return status::error(path + ": mmap failed: " + std::strerror(e));
        }
        m.data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
    return m;
}

}  // namespace kvs
