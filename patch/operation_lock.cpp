#include "patch/operation_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <span>

#include <nlohmann/json.hpp>

#include "hvpatch/error.h"
#include "patch/host_identity.h"
#include "patch/livepatch_module.h"
#include "patch/posix_file.h"

namespace hvpatch {
namespace {

constexpr std::size_t kMaxKeyLength = 100;     // what vm_lock_key keeps of an identity
constexpr std::size_t kMaxAcceptedKey = 200;   // leaves room for ".lock", ".json.tmp.XXXXXX" in NAME_MAX
constexpr std::size_t kMaxHolderDescription = 4096;

bool is_key_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

void check_key(const std::string& vm_key) {
    bool plain = !vm_key.empty() && vm_key.size() <= kMaxAcceptedKey && vm_key.front() != '.';
    for (char c : vm_key) plain = plain && is_key_char(c);
    if (!plain)
        throw Error(ErrorKind::Usage, "'" + vm_key +
                                          "' cannot name a VM lock file (allowed: [A-Za-z0-9._-], not starting "
                                          "with '.', at most " + std::to_string(kMaxAcceptedKey) + " characters; see vm_lock_key)");
}

std::int64_t epoch_ms_now() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

nlohmann::json holder_description(std::string_view operation) {
    HostUser user = current_user();
    nlohmann::json d = {
        {"pid", static_cast<long long>(::getpid())},
        {"uid", static_cast<unsigned long long>(user.uid)},
        {"user", describe_user(user)},
        {"host", host_name()},
        {"operation", std::string(operation)},
        {"since", utc_time_now()},
        {"since_epoch_ms", epoch_ms_now()},
    };
    return d;
}

// "hvpatch pid 1234 (user root) on host h has been running 'apply' since T (12 s)"
std::string describe_holder(const std::string& text) {
    nlohmann::json d = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!d.is_object() || !d.contains("pid") || !d["pid"].is_number_integer())
        return "another hvpatch process holds it (it has not described itself yet)";
    auto str = [&](const char* key) {
        return d.contains(key) && d[key].is_string() ? d[key].get<std::string>() : std::string("?");
    };
    long long pid = d["pid"].get<long long>();
    std::string out = "hvpatch pid " + std::to_string(pid) + " (user " + str("user") + ")";
    std::string host = str("host");
    if (host != host_name()) out += " on host " + host;
    out += " has been running '" + str("operation") + "' since " + str("since");
    if (d.contains("since_epoch_ms") && d["since_epoch_ms"].is_number_integer()) {
        long long seconds = (epoch_ms_now() - d["since_epoch_ms"].get<long long>()) / 1000;
        if (seconds >= 0) out += " (" + std::to_string(seconds) + " s)";
    }
    // The description outlives its writer only if the lock was inherited
    // by a child (fork without exec): say so rather than blame a dead pid.
    if (host == host_name() && pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
        out += "; that process has exited, a process it forked still holds the lock";
    return out;
}

}  // namespace

std::string default_state_dir() {
    const char* env = std::getenv("HVPATCH_STATE_DIR");
    std::string dir = env && *env ? env : "/var/lib/hvpatch";
    make_private_directories(dir);
    return dir;
}

std::string default_lock_dir() {
    const char* env = std::getenv("HVPATCH_LOCK_DIR");
    std::string dir = env && *env ? env : "/run/hvpatch/locks";
    try {
        make_private_directories(dir);
    } catch (const Error& e) {
        throw Error(e.kind(), std::string(e.what()) + " (hvpatch's lock directory; set HVPATCH_LOCK_DIR to use another)");
    }
    return dir;
}

std::string vm_lock_key(std::string_view vm_identity) {
    std::string key;
    bool changed = vm_identity.empty();
    for (char c : vm_identity) {
        if (is_key_char(c)) {
            key += c;
        } else {
            key += '_';
            changed = true;
        }
    }
    if (!key.empty() && key.front() == '.') {
        key.front() = '_';
        changed = true;
    }
    if (key.size() > kMaxKeyLength) {
        key.resize(kMaxKeyLength);
        changed = true;
    }
    if (changed) {
        std::string digest = sha256_hex(std::as_bytes(std::span(vm_identity.data(), vm_identity.size())));
        key += (key.empty() ? "" : "-") + digest.substr(0, 12);
    }
    return key;
}

OperationLock OperationLock::acquire(const std::string& state_dir, const std::string& vm_key,
                                     std::string_view operation) {
    check_key(vm_key);
    std::string path = state_dir + "/" + vm_key + ".lock";
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd.valid())
        throw Error(ErrorKind::Internal, "cannot open the lock file " + path + " of VM " + vm_key + ": " + errno_text());

    for (;;) {
        if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) break;
        if (errno == EINTR) continue;
        if (errno != EWOULDBLOCK)
            throw Error(ErrorKind::Internal, "cannot lock " + path + ": " + errno_text());
        std::string text(kMaxHolderDescription, '\0');
        long long n = pread_all(fd.get(), text.data(), text.size(), 0);
        text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        throw Error(ErrorKind::Busy, "VM " + vm_key + " is busy: " + describe_holder(text) + " [lock file " + path + "]");
    }

    // Ours. A description still in the file was left by a holder that
    // ended without releasing (release() empties it): keep it for the
    // caller, then replace it with ours.
    std::string previous(kMaxHolderDescription, '\0');
    long long n = pread_all(fd.get(), previous.data(), previous.size(), 0);
    previous.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    while (!previous.empty() && (previous.back() == '\n' || previous.back() == '\0')) previous.pop_back();
    OperationLock lock(fd.release(), path, vm_key);
    lock.previous_holder_ = std::move(previous);
    lock.description_ = holder_description(operation);
    lock.write_description();
    return lock;
}

void OperationLock::write_description() {
    std::string text = description_.dump() + "\n";
    if (text.size() > kMaxHolderDescription)
        throw Error(ErrorKind::Internal, "the holder description for " + path_ + " is too long");
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, text.data(), text.size(), 0) < 0)
        throw Error(ErrorKind::Internal, "cannot write the holder description to " + path_ + ": " + errno_text());
}

void OperationLock::describe(const std::string& key, const nlohmann::json& value) {
    if (fd_ < 0) throw Error(ErrorKind::Internal, "describe: the lock " + path_ + " is not held");
    description_[key] = value;
    write_description();
}

std::string unfinished_operation(const std::string& state_dir, const std::string& vm_key) {
    check_key(vm_key);
    std::string path = state_dir + "/" + vm_key + ".lock";
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd.valid()) return "";
    // Shared and not waiting: fails while an operation holds the lock.
    if (::flock(fd.get(), LOCK_SH | LOCK_NB) != 0) return "";
    std::string text(kMaxHolderDescription, '\0');
    long long n = pread_all(fd.get(), text.data(), text.size(), 0);
    text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
    return text;  // closing the descriptor drops the shared lock
}

std::string describe_unfinished_operation(const std::string& description) {
    nlohmann::json d = nlohmann::json::parse(description, nullptr, /*allow_exceptions=*/false);
    if (!d.is_object()) return "an hvpatch operation did not finish (its lock file holds: " + description + ")";
    auto str = [&](const char* key) {
        return d.contains(key) && d[key].is_string() ? d[key].get<std::string>() : std::string("?");
    };
    std::string pid = d.contains("pid") && d["pid"].is_number_integer() ? std::to_string(d["pid"].get<long long>()) : "?";
    std::string out = "'" + str("operation") + "' by hvpatch pid " + pid + " (user " + str("user") + ")";
    if (std::string host = str("host"); host != host_name()) out += " on host " + host;
    return out + ", started " + str("since") + ", did not finish";
}

OperationLock::OperationLock(OperationLock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      vm_key_(std::move(other.vm_key_)),
      description_(std::move(other.description_)),
      previous_holder_(std::move(other.previous_holder_)) {}

OperationLock& OperationLock::operator=(OperationLock&& other) noexcept {
    if (this != &other) {
        release();
        fd_ = std::exchange(other.fd_, -1);
        path_ = std::move(other.path_);
        vm_key_ = std::move(other.vm_key_);
        description_ = std::move(other.description_);
        previous_holder_ = std::move(other.previous_holder_);
    }
    return *this;
}

OperationLock::~OperationLock() { release(); }

void OperationLock::release() noexcept {
    if (fd_ < 0) return;
    // Empty first, so a stale description never outlives the lock; a
    // failure here only leaves an outdated description behind.
    (void)::ftruncate(fd_, 0);
    ::close(fd_);  // closing the only descriptor releases the flock
    fd_ = -1;
}

}  // namespace hvpatch
