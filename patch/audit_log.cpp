#include "patch/audit_log.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <span>
#include <thread>

#include "hvpatch/error.h"
#include "patch/host_identity.h"
#include "patch/livepatch_module.h"
#include "patch/posix_file.h"

namespace hvpatch {
namespace {

using json = nlohmann::json;

constexpr auto kLockTimeout = std::chrono::seconds(10);
constexpr std::size_t kTailChunk = 4096;

std::string octal_mode(mode_t mode) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
    return buf;
}

// flock(operation) without blocking forever: another hvpatch holds the
// log's lock only for one write and fsync, so 10 s means something hangs.
void lock_file(int fd, int operation, const std::string& path) {
    auto deadline = std::chrono::steady_clock::now() + kLockTimeout;
    auto pause = std::chrono::microseconds(200);
    for (;;) {
        if (::flock(fd, operation | LOCK_NB) == 0) return;
        if (errno == EINTR) continue;
        if (errno != EWOULDBLOCK) throw Error(ErrorKind::Internal, "cannot lock the audit log " + path + ": " + errno_text());
        if (std::chrono::steady_clock::now() >= deadline)
            throw Error(ErrorKind::Timeout, "the audit log " + path + " has been locked by another process for " +
                                                std::to_string(kLockTimeout.count()) + " s");
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::microseconds(20000));
    }
}

// Where the audit log's chain currently ends.
struct ChainEnd {
    std::uint64_t seq = 0;
    std::string hash{kAuditGenesisHash};
};

bool is_hex_hash(const json& v) {
    if (!v.is_string()) return false;
    const auto& s = v.get_ref<const std::string&>();
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

// Why `record` is not an audit record, or "" if it is one.
std::string record_shape_problem(const json& record) {
    if (!record.is_object()) return "not a JSON object";
    auto seq = record.find("seq");
    if (seq == record.end() || !seq->is_number_unsigned() || seq->get<std::uint64_t>() == 0)
        return "no positive integer 'seq'";
    auto hash = record.find("hash");
    if (hash == record.end() || !is_hex_hash(*hash)) return "no 'hash' of 64 hex digits";
    auto prev = record.find("prev");
    if (prev == record.end() || !is_hex_hash(*prev)) return "no 'prev' of 64 hex digits";
    return "";
}

std::string damaged_tail_advice(const std::string& path, long long keep_bytes) {
    return "hvpatch does not extend a damaged audit chain. Run `hvpatch audit verify " + path +
           "`, keep a copy of the file as evidence, then either move the log aside (hvpatch starts a new chain) or "
           "cut the damaged last line with `truncate -s " +
           std::to_string(keep_bytes) + " " + path + "`";
}

// Reads the last line of the locked log (size > 0) from the end of the
// file and returns where the chain ends.
ChainEnd read_chain_end(int fd, const std::string& path, long long size) {
    char last = 0;
    if (pread_all(fd, &last, 1, size - 1) != 1) throw Error(ErrorKind::Internal, "cannot read " + path + ": " + errno_text());
    // Find the newline before the last line (or the start of the file).
    long long line_end = size - 1;  // index of the last line's newline (if it has one)
    long long start = 0;
    bool found = false;
    long long search_end = last == '\n' ? size - 1 : size;  // a torn line has no newline of its own
    long long scan = search_end;
    std::string tail;  // the bytes from `scan` to search_end - 1, read so far
    while (scan > 0 && !found) {
        long long chunk = std::min<long long>(kTailChunk, scan);
        std::string buf(static_cast<std::size_t>(chunk), '\0');
        if (pread_all(fd, buf.data(), buf.size(), scan - chunk) != chunk)
            throw Error(ErrorKind::Internal, "cannot read " + path + ": " + errno_text());
        auto nl = buf.rfind('\n');
        if (nl != std::string::npos) {
            start = scan - chunk + static_cast<long long>(nl) + 1;
            tail = buf.substr(nl + 1) + tail;
            found = true;
        } else {
            tail = buf + tail;
        }
        scan -= chunk;
        if (!found && search_end - scan > static_cast<long long>(kMaxAuditRecordBytes) + 1) {
            throw Error(ErrorKind::Internal, "the last line of the audit log " + path + " is longer than " +
                                                 std::to_string(kMaxAuditRecordBytes) +
                                                 " bytes: it is not an audit record. " +
                                                 damaged_tail_advice(path, 0));
        }
    }
    if (last != '\n') {
        throw Error(ErrorKind::Internal,
                    "the audit log " + path + " ends in a torn line (" + std::to_string(size - start) +
                        " bytes without a newline at offset " + std::to_string(start) +
                        ": a crash or power loss during a write). " + damaged_tail_advice(path, start));
    }
    std::string line = tail.substr(0, static_cast<std::size_t>(line_end - start));
    json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
    std::string problem = record.is_discarded() ? "not JSON" : record_shape_problem(record);
    if (!problem.empty()) {
        throw Error(ErrorKind::Internal, "the last line of the audit log " + path + " (offset " + std::to_string(start) +
                                             ") is not an audit record: " + problem + ". " +
                                             damaged_tail_advice(path, start));
    }
    return ChainEnd{record["seq"].get<std::uint64_t>(), record["hash"].get<std::string>()};
}

json user_field() {
    HostUser user = current_user();
    json u = {{"uid", static_cast<std::uint64_t>(user.uid)}, {"name", nullptr}};
    if (user.name) u["name"] = *user.name;
    if (user.sudo_user) u["sudo_user"] = *user.sudo_user;
    return u;
}

// Reads a file line by line in chunks, telling whether each line ended
// with a newline.
class LineReader {
public:
    explicit LineReader(int fd) : fd_(fd) {}
    // False at end of file.
    bool next(std::string& line, bool& terminated, const std::string& path) {
        for (;;) {
            auto nl = buffer_.find('\n', pos_);
            if (nl != std::string::npos) {
                line.assign(buffer_, pos_, nl - pos_);
                pos_ = nl + 1;
                terminated = true;
                return true;
            }
            if (eof_) {
                if (pos_ >= buffer_.size()) return false;
                line.assign(buffer_, pos_);
                pos_ = buffer_.size();
                terminated = false;
                return true;
            }
            buffer_.erase(0, pos_);
            pos_ = 0;
            char chunk[65536];
            ssize_t n = ::read(fd_, chunk, sizeof chunk);
            if (n < 0) {
                if (errno == EINTR) continue;
                throw Error(ErrorKind::Internal, "cannot read the audit log " + path + ": " + errno_text());
            }
            if (n == 0) eof_ = true;
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
    }

private:
    int fd_;
    std::string buffer_;
    std::size_t pos_ = 0;
    bool eof_ = false;
};

// Opens the log for reading under a shared lock; invalid fd if missing.
UniqueFd open_for_reading(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
        if (errno == ENOENT) return fd;
        throw Error(ErrorKind::Internal, "cannot open the audit log " + path + ": " + errno_text());
    }
    lock_file(fd.get(), LOCK_SH, path);
    return fd;
}

std::string where(std::size_t line, std::optional<std::uint64_t> seq = std::nullopt) {
    std::string s = "line " + std::to_string(line);
    if (seq) s += " (seq " + std::to_string(*seq) + ")";
    return s;
}

}  // namespace

std::string configured_audit_log_path() {
    const char* env = std::getenv("HVPATCH_AUDIT_LOG");
    if (env && *env) return env;
    return std::string(kDefaultAuditLogPath);
}

std::string default_audit_log_path() {
    std::string path = configured_audit_log_path();
    if (path == kDefaultAuditLogPath) make_private_directories(path.substr(0, path.rfind('/')));
    return path;
}

std::string canonical_audit_json(const json& record) {
    return record.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
}

std::string audit_record_hash(const json& record) {
    std::string text;
    if (record.is_object() && record.contains("hash")) {
        json without = record;
        without.erase("hash");
        text = canonical_audit_json(without);
    } else {
        text = canonical_audit_json(record);
    }
    return sha256_hex(std::as_bytes(std::span(text.data(), text.size())));
}

json AuditLog::append(json record) {
    if (!record.is_object())
        throw Error(ErrorKind::Internal, "audit record for " + path_ + " is not a JSON object: " +
                                             canonical_audit_json(record).substr(0, 200));
    for (std::string_view field : kAuditReservedFields) {
        if (record.contains(field))
            throw Error(ErrorKind::Internal, "audit record for " + path_ + " sets the reserved field '" +
                                                 std::string(field) + "' (hvpatch fills it in)");
    }

    UniqueFd fd(::open(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
    if (!fd.valid())
        throw Error(ErrorKind::Internal, "cannot open the audit log " + path_ + ": " + errno_text() +
                                             " (HVPATCH_AUDIT_LOG chooses another file)");
    lock_file(fd.get(), LOCK_EX, path_);

    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw Error(ErrorKind::Internal, "cannot stat the audit log " + path_ + ": " + errno_text());
    if (!S_ISREG(st.st_mode)) throw Error(ErrorKind::Internal, "the audit log " + path_ + " is not a regular file");
    if (st.st_mode & 077) {
        if (::fchmod(fd.get(), 0600) != 0)
            throw Error(ErrorKind::Internal, "the audit log " + path_ + " has mode " + octal_mode(st.st_mode) +
                                                 " (open to group/others) and hvpatch cannot make it 0600: " +
                                                 errno_text());
        std::fprintf(stderr,
                     "hvpatch: warning: the audit log %s had mode %s; made it 0600 (others may have read or "
                     "changed it: `hvpatch audit verify` checks the chain)\n",
                     path_.c_str(), octal_mode(st.st_mode).c_str());
    }

    long long size = st.st_size;
    ChainEnd end = size > 0 ? read_chain_end(fd.get(), path_, size) : ChainEnd{};

    record["seq"] = end.seq + 1;
    record["time"] = utc_time_now();
    record["user"] = user_field();
    record["host"] = host_name();
    record["pid"] = static_cast<std::int64_t>(::getpid());
    record["hvpatch_version"] = std::string(kHvpatchVersion);
    record["prev"] = end.hash;
    // Normalise through the canonical text first, so that the record
    // hashed is exactly the one a reader parses back (invalid UTF-8
    // replaced, keys re-sorted after that).
    json stored = json::parse(canonical_audit_json(record));
    stored["hash"] = audit_record_hash(stored);
    std::string line = canonical_audit_json(stored) + "\n";
    if (line.size() > kMaxAuditRecordBytes)
        throw Error(ErrorKind::Internal, "audit record for " + path_ + " is " + std::to_string(line.size()) +
                                             " bytes, more than " + std::to_string(kMaxAuditRecordBytes));

    // One write() of the whole line on an O_APPEND descriptor, under the
    // lock. If it fails part-way (disk full), cut the file back so no
    // torn line stays behind.
    std::size_t written = write_all(fd.get(), line);
    if (written != line.size()) {
        int err = errno;
        if (written > 0 && ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
            throw Error(ErrorKind::Internal, "writing to the audit log " + path_ + " failed (" + errno_text(err) +
                                                 ") and cutting the partial line off failed too (" + errno_text() +
                                                 "): run `hvpatch audit verify " + path_ + "`");
        throw Error(ErrorKind::Internal, "cannot write to the audit log " + path_ + ": " + errno_text(err));
    }
    if (::fsync(fd.get()) != 0)
        throw Error(ErrorKind::Internal, "cannot fsync the audit log " + path_ + ": " + errno_text() +
                                             " (the record may not be on disk)");
    return stored;
}

AuditVerifyResult verify_audit_log(const std::string& path) {
    UniqueFd fd = open_for_reading(path);
    if (!fd.valid())
        throw Error(ErrorKind::Usage, "no audit log at " + path +
                                          " (nothing audited yet, or HVPATCH_AUDIT_LOG names another file)");

    // First pass: every line, and what it is.
    struct Entry {
        std::size_t line = 0;
        bool record = false;  // a well-formed audit record
        std::uint64_t seq = 0;
        std::string hash, prev;
        bool hash_ok = false;  // the hash matches the content
    };
    std::vector<Entry> entries;
    AuditVerifyResult result;
    std::vector<std::pair<std::size_t, std::string>> problems;  // (line, text), sorted by line at the end
    auto report = [&](std::size_t line, std::string text) { problems.emplace_back(line, std::move(text)); };
    LineReader reader(fd.get());
    std::string text;
    bool terminated = true;
    std::size_t line_no = 0;
    while (reader.next(text, terminated, path)) {
        Entry e;
        e.line = ++line_no;
        if (!terminated) {
            report(e.line, where(e.line) + ": torn last line (" + std::to_string(text.size()) +
                                      " bytes without a newline: a crash or power loss during a write)");
        } else if (text.empty()) {
            report(e.line, where(e.line) + ": empty line (not written by hvpatch)");
        } else {
            json record;
            std::string parse_error;
            try {
                record = json::parse(text);
            } catch (const json::exception& ex) {
                parse_error = ex.what();
            }
            std::string problem = parse_error.empty() ? record_shape_problem(record) : "";
            if (!parse_error.empty()) {
                report(e.line, where(e.line) + ": not JSON (" + parse_error + ")");
            } else if (!problem.empty()) {
                report(e.line, where(e.line) + ": not an audit record (" + problem + ")");
            } else {
                e.record = true;
                e.seq = record["seq"].get<std::uint64_t>();
                e.hash = record["hash"].get<std::string>();
                e.prev = record["prev"].get<std::string>();
                e.hash_ok = audit_record_hash(record) == e.hash;
                if (!e.hash_ok)
                    report(e.line, where(e.line, e.seq) +
                                              ": its hash does not match its content: the record was edited");
            }
        }
        entries.push_back(std::move(e));
    }

    // Second pass: the chain. Each record's prev must be the hash of the
    // record before it; when it is not, say what the evidence suggests.
    std::map<std::string, std::size_t> by_hash;  // hash -> index in entries (first occurrence)
    for (std::size_t i = 0; i < entries.size(); ++i)
        if (entries[i].record) by_hash.emplace(entries[i].hash, i);

    const Entry* before = nullptr;            // the last record seen
    std::string expected_prev(kAuditGenesisHash);  // what the next record's prev should be
    std::uint64_t expected_seq = 1;
    bool unreadable_before = false;  // a non-record line since `before`
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const Entry& e = entries[i];
        if (!e.record) {
            unreadable_before = true;
            continue;
        }
        ++result.records;
        std::string here = where(e.line, e.seq);
        if (std::size_t first = by_hash.at(e.hash); first != i) {
            // An exact copy of an earlier record: not part of the chain.
            const Entry& original = entries[first];
            report(e.line, here + (e.hash_ok ? ": a copy of " + where(original.line, original.seq) +
                                                   ": a duplicated record was inserted"
                                             : ": carries the hash of " + where(original.line, original.seq) +
                                                   ": an edited copy of that record was inserted"));
            continue;
        }
        if (e.prev == expected_prev) {
            if (e.seq != expected_seq)
                report(e.line, here + ": seq should be " + std::to_string(expected_seq) +
                                          " although its prev matches: the chain was rewritten (hashes recomputed)");
        } else if (!before) {
            if (e.seq > 1)
                report(e.line, here + ": the first record has seq " + std::to_string(e.seq) +
                                          " and a prev that is not the genesis value: records 1.." +
                                          std::to_string(e.seq - 1) + " were deleted from the start of the log");
            else
                report(e.line, here + ": the first record's prev is not the genesis value (64 zeros)");
        } else {
            // Two adjacent records swapped: this one links to the next
            // line's record, and that one to the record before this.
            const Entry* next = i + 1 < entries.size() && entries[i + 1].record ? &entries[i + 1] : nullptr;
            auto found = by_hash.find(e.prev);
            if (next && e.prev == next->hash && next->prev == expected_prev) {
                report(e.line, here + " and " + where(next->line, next->seq) +
                                          " are swapped: the records were reordered");
                result.records += 1;
                before = next;
                // The record after the pair should link to the pair's
                // original second record, which is this one.
                expected_prev = e.hash;
                expected_seq = std::max(e.seq, next->seq) + 1;
                unreadable_before = false;
                ++i;
                continue;
            }
            if (found != by_hash.end() && found->second > i) {
                const Entry& p = entries[found->second];
                report(e.line, here + ": comes before its predecessor in the chain, " +
                                          where(p.line, p.seq) + ": the records were reordered");
            } else if (found != by_hash.end()) {
                const Entry& p = entries[found->second];
                std::string between = p.line + 1 == e.line - 1 ? "line " + std::to_string(p.line + 1)
                                                               : "lines " + std::to_string(p.line + 1) + ".." +
                                                                     std::to_string(e.line - 1);
                report(e.line, here + ": its prev is the hash of " + where(p.line, p.seq) + ", so " +
                                          between + " between them were inserted (or moved there)");
            } else if (e.seq > before->seq + 1) {
                std::uint64_t missing = e.seq - before->seq - 1;
                std::string what = missing == 1 ? "the record with seq " + std::to_string(before->seq + 1) + " is"
                                                : std::to_string(missing) + " records (seq " +
                                                      std::to_string(before->seq + 1) + ".." +
                                                      std::to_string(e.seq - 1) + ") are";
                report(e.line, here + ": " + what + " missing after " + where(before->line, before->seq) +
                                   ": deleted" +
                                   (unreadable_before ? ", or damaged into the unreadable line(s) before it" : ""));
            } else if (e.seq <= before->seq) {
                report(e.line, here + ": seq does not increase after " + where(before->line, before->seq) +
                                          " and its prev matches no record in the log: a record was inserted, or "
                                          "records were reordered");
            } else {
                report(e.line, here + ": its prev does not match the hash of " +
                                          where(before->line, before->seq) +
                                          ": the record before it was replaced, or records were deleted and the "
                                          "rest renumbered");
            }
        }
        before = &e;
        expected_prev = e.hash;
        expected_seq = e.seq + 1;
        unreadable_before = false;
    }
    if (before) {
        result.last_seq = before->seq;
        result.last_hash = before->hash;
    }
    std::stable_sort(problems.begin(), problems.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& [line, text] : problems) result.problems.push_back(std::move(text));
    result.ok = result.problems.empty();
    return result;
}

std::vector<json> read_audit_log(const std::string& path, const AuditFilter& filter) {
    std::vector<json> out;
    UniqueFd fd = open_for_reading(path);
    if (!fd.valid()) return out;
    auto contains = [](const json& v, const std::string& needle) {
        if (v.is_string()) return v.get_ref<const std::string&>().find(needle) != std::string::npos;
        if (v.is_number()) return v.dump().find(needle) != std::string::npos;
        return false;
    };
    LineReader reader(fd.get());
    std::string text;
    bool terminated = true;
    while (reader.next(text, terminated, path)) {
        json record = json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (!record.is_object()) continue;
        if (!filter.since.empty()) {
            auto t = record.find("time");
            if (t == record.end() || !t->is_string() || t->get_ref<const std::string&>() < filter.since) continue;
        }
        if (!filter.vm.empty()) {
            auto vm = record.find("vm");
            if (vm == record.end()) continue;
            bool match = contains(*vm, filter.vm);
            if (vm->is_object()) {
                for (const char* key : {"name", "id", "key", "uuid", "target"})
                    if (vm->contains(key) && contains((*vm)[key], filter.vm)) match = true;
            }
            if (!match) continue;
        }
        out.push_back(std::move(record));
    }
    return out;
}

}  // namespace hvpatch
