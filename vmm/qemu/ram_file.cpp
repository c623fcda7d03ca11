#include "vmm/qemu/ram_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "hvpatch/error.h"

namespace hvpatch {

RamFile::RamFile(const std::string& path, std::uint64_t size) : path_(path), size_(size) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw Error(ErrorKind::Unreachable, "cannot open guest RAM file " + path + ": " + std::strerror(errno));
    struct stat st{};
    if (fstat(fd, &st) != 0 || static_cast<std::uint64_t>(st.st_size) < size) {
        ::close(fd);
        throw Error(ErrorKind::Unreachable, "guest RAM file " + path + " is smaller than the guest's " +
                                                std::to_string(size) + " bytes of RAM");
    }
    void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    int err = errno;
    ::close(fd);
    if (map == MAP_FAILED)
        throw Error(ErrorKind::Unreachable, "cannot map guest RAM file " + path + ": " + std::strerror(err));
    base_ = static_cast<const std::byte*>(map);
}

RamFile::~RamFile() {
    if (base_) munmap(const_cast<std::byte*>(base_), size_);
}

void RamFile::read(std::uint64_t offset, std::span<std::byte> out) const {
    if (offset > size_ || out.size() > size_ - offset)
        throw Error(ErrorKind::Internal, "RAM file read out of bounds at offset " + std::to_string(offset));
    std::memcpy(out.data(), base_ + offset, out.size());
}

}  // namespace hvpatch
