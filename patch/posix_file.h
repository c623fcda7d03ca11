// Small POSIX file helpers shared by the state, lock and audit files:
// an owning file descriptor, errno text for error messages, and
// write/read loops that survive partial transfers and EINTR.
#pragma once

#include <cerrno>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

namespace hvpatch {

// Owns one file descriptor; closes it when it goes.
class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) : fd_(fd) {}
    ~UniqueFd() { reset(); }
    UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        if (this != &other) {
            reset();
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;

    int get() const { return fd_; }
    bool valid() const { return fd_ >= 0; }
    void reset();
    // Gives up ownership: returns the fd and forgets it.
    int release() { return std::exchange(fd_, -1); }

private:
    int fd_ = -1;
};

// strerror(err) as a std::string (thread-safe).
std::string errno_text(int err = errno);

// write() until all of `data` is written. Returns the number of bytes
// written before an error (== data.size() on success); errno is set when
// it returns less.
std::size_t write_all(int fd, std::string_view data);

// pread() until `size` bytes at `offset` are read or end of file; throws
// nothing, returns the bytes read (short at end of file); -1 on error.
long long pread_all(int fd, char* buffer, std::size_t size, long long offset);

// mkdir -p: creates `dir` and its missing parents with mode 0700 (parents
// that exist keep their mode). Throws Error(Internal) naming the directory.
void make_private_directories(const std::string& dir);

// The directory part of `path` ("." for a bare file name).
std::string parent_directory(const std::string& path);

}  // namespace hvpatch
