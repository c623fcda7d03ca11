#include "support/example_patches.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "hvpatch/error.h"
#include "support/run_command.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

std::string trim(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    return text;
}

std::vector<std::string> split_words(std::string_view text) {
    std::istringstream in{std::string(text)};
    return {std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
}

std::string sysfs_dir(std::string_view module) { return "/sys/kernel/livepatch/" + std::string(module); }

// The module names are fixed identifiers; anything else must not reach a
// guest shell command unquoted.
void check_module_name(std::string_view module) {
    if (module.empty() || module.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") != std::string_view::npos)
        throw Error(ErrorKind::Usage, "not a module name: '" + std::string(module) + "'");
}

std::string read_host_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

const std::vector<ExamplePatch> kExamples = {
    {Example::Cmdline, "livepatch-cmdline", "livepatch_cmdline", {"cmdline_proc_show"},
     "/proc/cmdline prints \"this has been live patched\""},
    {Example::Sleeper, "livepatch-sleeper", "livepatch_sleeper", {"do_nanosleep"},
     "nanosleep sleeps in livepatch_do_nanosleep, an identical copy of do_nanosleep that /proc/PID/stack shows"},
    {Example::Prototype, "livepatch-prototype", "livepatch_prototype", {"proc_pid_statm", "task_statm"},
     "task_statm gets a new prototype; proc_pid_statm calls it so and ends /proc/PID/statm with \" livepatched\""},
    {Example::Alternatives, "livepatch-alternatives", "livepatch_alternatives", {"version_proc_show"},
     "/proc/version printed by code with alternatives, paravirt calls and WARNs the loader must rewrite"},
};

}  // namespace

std::span<const ExamplePatch> example_patches() { return kExamples; }

const ExamplePatch& example_patch(Example id) {
    for (const auto& e : kExamples)
        if (e.id == id) return e;
    throw Error(ErrorKind::Internal, "unknown example patch " + std::to_string(static_cast<int>(id)));
}

namespace {
// scripts/build-example-patches' cache dir for `release`.
std::string example_patch_dir(const std::string& release) {
    const char* cache = std::getenv("HVPATCH_CACHE");
    const char* xdg = std::getenv("XDG_CACHE_HOME");
    const char* home = std::getenv("HOME");
    std::string root = cache && *cache ? cache
                       : xdg && *xdg   ? std::string(xdg) + "/hvpatch"
                                       : std::string(home ? home : "") + "/.cache/hvpatch";
    return root + "/patches/" + release;
}
}  // namespace

std::string example_patch_ko(Example id, const std::string& release) {
    // The script is quick when nothing changed, but once per process is enough.
    struct Build {
        std::string dir;     // where the .ko files are
        std::string failed;  // the script's report when some example did not build
    };
    static std::mutex mutex;
    static std::map<std::string, Build> built;  // release -> what the script did
    std::lock_guard lock(mutex);
    auto it = built.find(release);
    if (it == built.end()) {
        std::vector<std::string> argv = {source_dir() + "/scripts/build-example-patches"};
        if (!release.empty()) argv.insert(argv.end(), {"--release", release});
        CommandResult result = run_command(argv, 900s);
        std::string out = trim(result.out);
        Build b;
        if (result.exit_code == 0 && !out.empty()) {
            b.dir = out.substr(out.find_last_of('\n') + 1);
        } else if (result.err.find("kbuild failed for ") != std::string::npos && !release.empty()) {
            // Some example does not build for this kernel (the script names
            // it and builds the others): the others are usable.
            b.dir = example_patch_dir(release);
            b.failed = result.describe();
        } else {
            throw std::runtime_error("scripts/build-example-patches failed (are the test guest's kernel headers "
                                     "installed? run scripts/install-deps): " + result.describe());
        }
        it = built.emplace(release, b).first;
    }
    const ExamplePatch& example = example_patch(id);
    if (!it->second.failed.empty() &&
        it->second.failed.find("kbuild failed for " + std::string(example.directory)) != std::string::npos)
        throw std::runtime_error(std::string(example.directory) + " does not build for " + release + ": " +
                                 it->second.failed);
    std::string ko = it->second.dir + "/" + std::string(example.module) + ".ko";
    if (access(ko.c_str(), R_OK) != 0)
        throw std::runtime_error("scripts/build-example-patches did not produce " + ko +
                                 (it->second.failed.empty() ? "" : ": " + it->second.failed));
    return ko;
}

std::string put_example_patch(GuestShell& guest, Example id) {
    const ExamplePatch& example = example_patch(id);
    std::string ko = example_patch_ko(id, guest.release());
    char tmp[] = "/tmp/hvpatch-example-XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0) throw std::runtime_error("mkstemp failed");
    close(fd);
    CommandResult stripped = run_command({"objcopy", "--strip-debug", ko, tmp}, 60s);
    std::string bytes;
    try {
        if (stripped.exit_code != 0)
            throw std::runtime_error("objcopy --strip-debug " + ko + " failed: " + stripped.describe());
        bytes = read_host_file(tmp);
    } catch (...) {
        unlink(tmp);
        throw;
    }
    unlink(tmp);
    std::string guest_path = "/tmp/" + std::string(example.module) + ".ko";
    guest.put_file(guest_path, bytes);
    return guest_path;
}

void guest_insmod(GuestShell& guest, const std::string& guest_ko) {
    if (guest_ko.find('\'') != std::string::npos) throw Error(ErrorKind::Usage, "bad guest path " + guest_ko);
    guest.run_ok("insmod '" + guest_ko + "'", 60s);
}

void guest_livepatch_disable(GuestShell& guest, std::string_view module) {
    check_module_name(module);
    guest.run_ok("echo 0 > " + sysfs_dir(module) + "/enabled");
}

std::string guest_module_area_allocations(GuestShell& guest) {
    return guest.run_ok(
        "k=$(cat /proc/sys/kernel/kptr_restrict); echo 1 > /proc/sys/kernel/kptr_restrict; "
        "grep -E '^0xffffffff[c-f]' /proc/vmallocinfo"
        " | grep -v -e ' load_module+' -e ' arch_ftrace_update_trampoline+' -e ' bpf_prog_pack_alloc+' | sort -u; "
        "echo $k > /proc/sys/kernel/kptr_restrict; true");
}

void wait_guest_livepatch_gone(GuestShell& guest, std::string_view module, std::chrono::milliseconds timeout) {
    guest.run_ok("while [ -e /sys/kernel/livepatch/" + std::string(module) + " ]; do usleep 10000; done", timeout);
}

void guest_rmmod(GuestShell& guest, std::string_view module) {
    check_module_name(module);
    guest.run_ok("rmmod " + std::string(module), 60s);
}

std::string guest_livepatch_transition(GuestShell& guest, std::string_view module) {
    check_module_name(module);
    // As in wait_guest_livepatch_transition: a read that fails half-way is "gone".
    return trim(guest.run_ok("s=$(cat " + sysfs_dir(module) + "/transition 2>/dev/null) || s=gone; echo $s"));
}

std::string wait_guest_livepatch_transition(GuestShell& guest, std::string_view module,
                                            std::chrono::milliseconds timeout) {
    check_module_name(module);
    const std::string file = sysfs_dir(module) + "/transition";
    // A read that fails half-way (the core removes the directory while cat
    // reads it) counts as gone, not as "1" followed by "gone".
    auto result = guest.run("while s=$(cat " + file + " 2>/dev/null) || s=gone; [ \"$s\" = 1 ]; do usleep 10000; "
                            "done; echo $s",
                            timeout);
    if (result.status != 0)
        throw Error(ErrorKind::Guest, "waiting for " + file + " failed with status " + std::to_string(result.status) +
                                          ": " + result.output);
    return trim(result.output);
}

double guest_transition_seconds(GuestShell& guest, std::string_view module, bool patching) {
    check_module_name(module);
    std::string log = guest.run_ok("dmesg | grep -F \"'" + std::string(module) + "': \" || true");
    const std::string quoted = "'" + std::string(module) + "': ";
    const std::string start = quoted + (patching ? "starting patching transition" : "starting unpatching transition");
    const std::string done = quoted + (patching ? "patching complete" : "unpatching complete");
    double started = -1, completed = -1;
    std::istringstream lines(log);
    for (std::string line; std::getline(lines, line);) {
        // "[  493.507861] livepatch: '<module>': starting patching transition"
        double stamp = -1;
        if (std::sscanf(line.c_str(), "[ %lf]", &stamp) != 1) continue;
        if (line.ends_with(start)) started = stamp, completed = -1;
        else if (line.ends_with(done) && started >= 0) completed = stamp;
    }
    return started >= 0 && completed >= started ? completed - started : -1;
}

std::vector<GuestTaskPatchState> guest_tasks_in_patch_state(GuestShell& guest, int state) {
    // `read` is a shell builtin: no fork per task.
    // Tasks may exit meanwhile: their errors go to /dev/null.
    std::string out = guest.run_ok("for d in /proc/[0-9]*/task/[0-9]*; do read -r s < $d/patch_state || continue; "
                                   "[ \"$s\" = " + std::to_string(state) + " ] || continue; read -r c < $d/comm; "
                                   "echo \"${d##*/} $s $c\"; done 2>/dev/null; true",
                                   60s);
    std::vector<GuestTaskPatchState> tasks;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
        GuestTaskPatchState task;
        std::istringstream fields(line);
        if (!(fields >> task.pid >> task.patch_state)) continue;
        std::getline(fields >> std::ws, task.comm);
        tasks.push_back(task);
    }
    return tasks;
}

std::string kernel_problems_shown(const GuestShell& guest) {
    std::string shown;
    for (const auto& line : kernel_problem_lines(guest.console_log())) shown += line + "\n";
    return shown;
}

std::vector<std::string> kernel_problem_lines(std::string_view log) {
    static constexpr std::string_view kProblems[] = {"BUG:", "WARNING:", "Oops", "general protection fault",
                                                     "Call Trace", "Kernel panic", "kernel BUG"};
    std::vector<std::string> found;
    std::istringstream lines{std::string(log)};
    for (std::string line; std::getline(lines, line);)
        for (auto problem : kProblems)
            if (line.find(problem) != std::string::npos) {
                found.push_back(line);
                break;
            }
    return found;
}

SleeperVersion sleeper_version(std::string_view stack) {
    return stack.find(kSleeperPatchedFrame) != std::string_view::npos ? SleeperVersion::Patched
                                                                       : SleeperVersion::Original;
}

std::vector<int> sleep_workload_pids(GuestShell& guest) {
    // (2>/dev/null first: a task that exits meanwhile makes `<` fail.)
    std::string out = guest.run_ok("for d in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' 2>/dev/null < $d/cmdline)\" = "
                                   "'sleep 1000000 ' ] && echo ${d#/proc/}; done 2>/dev/null; true");
    std::vector<int> pids;
    for (const auto& word : split_words(out)) {
        if (word.find_first_not_of("0123456789") != std::string::npos)
            throw Error(ErrorKind::Guest, "listing the guest's sleep workloads printed '" + out + "'");
        pids.push_back(std::stoi(word));
    }
    return pids;
}

std::string guest_task_stack(GuestShell& guest, int pid) {
    return guest.run_ok("cat /proc/" + std::to_string(pid) + "/stack");
}

SleeperVersion fresh_sleeper_version(GuestShell& guest, std::string* stack) {
    // Wait until the new task's stack shows the nanosleep path (it is a
    // forked shell first, then sleep before it reaches the syscall).
    std::string out = guest.run_ok(
        "sleep 1000 & p=$!; i=0; while [ $i -lt 200 ]; do s=$(cat /proc/$p/stack 2>/dev/null); case $s in "
        "*nanosleep*) break ;; esac; usleep 20000; i=$((i + 1)); done; kill $p; echo \"$s\"");
    if (out.find("nanosleep") == std::string::npos)
        throw Error(ErrorKind::Guest, "a new `sleep` in the guest never showed the nanosleep path; its stack: " + out);
    if (stack) *stack = out;
    return sleeper_version(out);
}

HvpatchSleeper classify_hvpatch_sleeper(std::string_view stack) {
    if (stack.find_first_not_of(" \n") == std::string_view::npos) return HvpatchSleeper::Patched;
    if (stack.find("hrtimer_nanosleep+") != std::string_view::npos || stack.starts_with("[<0>] do_syscall_64+"))
        return HvpatchSleeper::Original;
    return HvpatchSleeper::Unknown;
}

std::string to_string(HvpatchSleeper sleeper) {
    return sleeper == HvpatchSleeper::Original  ? "original"
           : sleeper == HvpatchSleeper::Patched ? "hvpatch-patched"
                                                : "unknown";
}

std::string fresh_sleeper_stack(GuestShell& guest) {
    return guest.run_ok(
        "sleep 1000 & p=$!; i=0; while [ $i -lt 200 ]; do read -r n rest < /proc/$p/syscall; "
        "s=$(grep State: /proc/$p/status); case \"$n $s\" in '230 '*sleeping*) break ;; esac; "
        "usleep 20000; i=$((i + 1)); done; usleep 50000; cat /proc/$p/stack; kill $p");
}

bool statm_is_patched(std::string_view line) {
    while (!line.empty() && line.back() == '\n') line.remove_suffix(1);
    return line.ends_with(kStatmPatchedSuffix);
}

std::vector<std::string> statm_mismatch_lines(std::string_view ref) {
    auto f = split_words(ref);
    if (f.size() != 7) throw Error(ErrorKind::Usage, "not a statm line: '" + std::string(ref) + "'");
    // f: size resident shared text lib data dt. Old prototype fills
    // (shared, text, data, resident), the new one (resident, shared, text, data).
    const std::string &size = f[0], &resident = f[1], &shared = f[2], &text = f[3], &data = f[5];
    auto line = [&](const std::string& r, const std::string& s, const std::string& t, const std::string& d) {
        return size + " " + r + " " + s + " " + t + " 0 " + d + " 0";
    };
    return {
        // New caller passes (&resident, &shared, &text, &data); the old callee
        // stores shared, text, data, resident through them.
        line(shared, text, data, resident) + std::string(kStatmPatchedSuffix),
        // Old caller passes (&shared, &text, &data, &resident); the new callee
        // stores resident, shared, text, data through them.
        line(data, resident, shared, text),
    };
}

namespace {

ProtoCheckCounts parse_counts(const std::string& counts, std::string errors) {
    ProtoCheckCounts result;
    std::istringstream in(counts);
    if (!(in >> result.original >> result.patched >> result.wrong))
        throw Error(ErrorKind::Guest, "proto-check printed no counts: '" + counts + "'");
    result.errors = std::move(errors);
    return result;
}

}  // namespace

std::string start_proto_check(GuestShell& guest) { return trim(guest.run_ok("proto-check start", 60s)); }

ProtoCheckCounts proto_check_status(GuestShell& guest) {
    return parse_counts(guest.run_ok("proto-check status"), guest.run_ok("cat /tmp/proto-errors 2>/dev/null; true"));
}

ProtoCheckCounts stop_proto_check(GuestShell& guest) {
    std::string counts = guest.run_ok("proto-check stop", 60s);
    return parse_counts(counts, guest.run_ok("cat /tmp/proto-errors 2>/dev/null; true"));
}

std::string proto_check_classify(GuestShell& guest, std::string_view ref, std::string_view line) {
    for (auto text : {ref, line})
        if (text.find_first_of("'\n") != std::string_view::npos)
            throw Error(ErrorKind::Usage, "proto-check classify: no quotes or line breaks: " + std::string(text));
    return trim(guest.run_ok("proto-check classify '" + std::string(ref) + "' '" + std::string(line) + "'"));
}

}  // namespace hvpatch::test
