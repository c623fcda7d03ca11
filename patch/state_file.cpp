#include "patch/state_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "hvpatch/error.h"
#include "patch/posix_file.h"

namespace hvpatch {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& step, int err) {
    throw Error(ErrorKind::Internal, path + ": " + step + ": " + errno_text(err));
}

// Removes the temporary file unless it was renamed into place.
struct TempFileGuard {
    std::string path;
    bool armed = true;
    ~TempFileGuard() {
        if (armed) ::unlink(path.c_str());
    }
};

}  // namespace

void write_json_atomically(const std::string& path, const nlohmann::json& value) {
    std::string text = value.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    std::string dir = parent_directory(path);

    std::vector<char> tmpl(path.begin(), path.end());
    std::string suffix = ".tmp.XXXXXX";
    tmpl.insert(tmpl.end(), suffix.begin(), suffix.end());
    tmpl.push_back('\0');
    // mkostemp creates the file with mode 0600 and O_EXCL.
    UniqueFd fd(::mkostemp(tmpl.data(), O_CLOEXEC));
    if (!fd.valid()) fail(path, "cannot create a temporary file in " + dir, errno);
    TempFileGuard guard{tmpl.data()};

    if (::fchmod(fd.get(), 0600) != 0) fail(guard.path, "chmod 0600", errno);
    if (write_all(fd.get(), text) != text.size()) fail(guard.path, "write", errno);
    if (::fsync(fd.get()) != 0) fail(guard.path, "fsync", errno);
    fd.reset();
    if (::rename(guard.path.c_str(), path.c_str()) != 0) fail(path, "rename from " + guard.path, errno);
    guard.armed = false;

    // The rename is durable only once the directory entry is on disk.
    UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir_fd.valid()) fail(dir, "open directory to fsync it", errno);
    if (::fsync(dir_fd.get()) != 0) fail(dir, "fsync directory", errno);
}

std::optional<nlohmann::json> read_json_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
        if (errno == ENOENT) return std::nullopt;
        fail(path, "cannot open", errno);
    }
    std::string text;
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(path, "read", errno);
        }
        if (n == 0) break;
        text.append(buf, static_cast<std::size_t>(n));
    }
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw Error(ErrorKind::Internal, path + ": corrupt JSON state file: " + e.what());
    }
}

}  // namespace hvpatch
