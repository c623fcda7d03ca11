// A read-only mapping of a guest's shared RAM file (memory-backend-file with
// share=on). Reads are plain memory copies; the guest may be running, so a
// caller that needs a consistent view pauses the VM first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace hvpatch {

class RamFile {
public:
    // Maps `path`, which must hold at least `size` bytes. Throws
    // Error(Unreachable) naming the path and the reason.
    RamFile(const std::string& path, std::uint64_t size);
    ~RamFile();
    RamFile(const RamFile&) = delete;
    RamFile& operator=(const RamFile&) = delete;

    // Copies `out.size()` bytes at RAM-block `offset`; the caller has checked
    // the bounds against size().
    void read(std::uint64_t offset, std::span<std::byte> out) const;
    std::uint64_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    std::uint64_t size_ = 0;
    const std::byte* base_ = nullptr;
};

}  // namespace hvpatch
