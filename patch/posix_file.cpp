#include "patch/posix_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "hvpatch/error.h"

namespace hvpatch {

void UniqueFd::reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

std::string errno_text(int err) {
    char buf[256];
    // GNU strerror_r returns the message (possibly not in buf).
    return ::strerror_r(err, buf, sizeof buf);
}

std::size_t write_all(int fd, std::string_view data) {
    std::size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return done;
        }
        if (n == 0) {
            errno = EIO;
            return done;
        }
        done += static_cast<std::size_t>(n);
    }
    return done;
}

long long pread_all(int fd, char* buffer, std::size_t size, long long offset) {
    std::size_t done = 0;
    while (done < size) {
        ssize_t n = ::pread(fd, buffer + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    return static_cast<long long>(done);
}

void make_private_directories(const std::string& dir) {
    if (dir.empty()) return;
    // Walk the path from the root, creating what is missing.
    std::size_t pos = 0;
    while (pos != std::string::npos) {
        pos = dir.find('/', pos + 1);
        std::string prefix = dir.substr(0, pos);
        if (prefix.empty() || prefix == "/") continue;
        if (::mkdir(prefix.c_str(), 0700) == 0) continue;
        int err = errno;
        struct stat st {};
        if (err == EEXIST && ::stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
        throw Error(ErrorKind::Internal, "cannot create directory " + prefix + ": " +
                                             (err == EEXIST ? std::string("exists and is not a directory")
                                                            : errno_text(err)));
    }
}

std::string parent_directory(const std::string& path) {
    std::size_t slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

}  // namespace hvpatch
