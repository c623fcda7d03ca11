// `hvpatch apply` refuses what it must not load, and a refusal leaves the
// guest exactly as it was.
//
// One test guest for the binary. Every case runs the real CLI
// (build/hvpatch, --json, a private --state-dir and --audit-log per test)
// on a bad module and checks:
//   - the exit code: 2 (usage) for a file that is not a usable livepatch
//     module or a patch that is already applied, 4 (guest) for a module
//     that does not fit this guest or a guest that cannot take it now (its
//     own ftrace on the function, its own livepatch in a transition);
//   - the error (stdout's {"error": {"kind", "message"}}) names the cause;
//   - guest memory is byte-identical: the first 64 bytes of every function
//     the patch names (and of cmdline_proc_show, which the example patches),
//     read through hvpatch's library in a pause, and the guest's own
//     /proc/vmallocinfo lines of module_alloc (no allocation leaked or left
//     behind);
//   - `hvpatch status --json` lists no patch and the state dir's records are
//     unchanged (none, unless the case applied one on purpose);
//   - the audit log's last record is the apply with outcome "refused" and
//     the error, and verify_audit_log() finds the chain intact;
//   - `hvpatch check` on the same module reports the refusal (exit 4, "would
//     refuse", for file-level refusals too: check's exit code answers "would
//     apply load it?"), writes a "would-refuse" audit record and changes
//     nothing.
// Where a case has a fix (--force-vermagic, tracing off, the guest's
// transition over), the same module then applies and reverts cleanly.
//
// Bad modules are made from the example livepatch_cmdline.ko by
// replace_unique() below: a same-length byte-level find/replace in a copy,
// so that every offset, size and relocation of the ELF file stays valid and
// only the one string differs (a release in .modinfo's vermagic, the
// klp_func.old_name string, a section name in .shstrtab). The one with an
// exception table is built from source (tests/integration/patches/
// livepatch-extable) because a forged table would prove less.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "hvpatch/address.h"
#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "introspect/kallsyms.h"
#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

constexpr int kExitUsage = 2;
constexpr int kExitGuest = 4;
constexpr std::size_t kEntryBytes = 64;
const std::string kTracing = "/sys/kernel/tracing";
// The five bytes of the ftrace NOP (nopl 0x0(%rax,%rax,1)) and endbr64.
const std::string kFtraceNop("\x0f\x1f\x44\x00\x00", 5);
const std::string kEndbr64("\xf3\x0f\x1e\xfa", 4);

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + path);
}

std::string hex_bytes(std::string_view bytes) {
    std::string out;
    static const char* digits = "0123456789abcdef";
    for (unsigned char c : bytes) {
        if (!out.empty()) out += ' ';
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

// The byte-level helper that makes the bad modules: `bytes` with the one
// occurrence of `from` replaced by `to`, which must have the same length
// (so that no offset in the ELF file moves). Throws if `from` occurs zero
// or several times: the edit must hit exactly the string the test means.
// Callers include the NUL that ends a C string (or the '=' of a .modinfo
// key) in `from` so that a longer string containing it does not match.
std::string replace_unique(std::string bytes, std::string_view from, std::string_view to) {
    if (from.size() != to.size())
        throw std::runtime_error("replace_unique: '" + std::string(from) + "' and '" + std::string(to) +
                                 "' differ in length");
    std::size_t at = bytes.find(from);
    if (at == std::string::npos) throw std::runtime_error("replace_unique: '" + std::string(from) + "' not found");
    if (bytes.find(from, at + 1) != std::string::npos)
        throw std::runtime_error("replace_unique: '" + std::string(from) + "' occurs more than once");
    bytes.replace(at, to.size(), to);
    return bytes;
}

// A C string as it is stored in a string table: preceded by the NUL that
// ends the string before it, followed by its own.
std::string c_string(std::string_view name) { return std::string(1, '\0') + std::string(name) + std::string(1, '\0'); }

// What a refusal must leave untouched in the guest.
struct GuestSnapshot {
    std::map<std::string, std::string> entries;  // function -> its first kEntryBytes, hex
    std::string module_allocs;                   // /proc/vmallocinfo lines in the module area
    bool operator==(const GuestSnapshot&) const = default;
};

std::ostream& operator<<(std::ostream& out, const GuestSnapshot& s) {
    for (const auto& [name, bytes] : s.entries) out << "  " << name << ": " << bytes << "\n";
    return out << "  module area in /proc/vmallocinfo:\n" << s.module_allocs;
}

// One refusal to check: the module, the functions whose bytes must stay,
// what apply must say.
struct Refusal {
    Refusal(std::string ko_, int apply_exit_, std::vector<std::string> causes_)
        : ko(std::move(ko_)), apply_exit(apply_exit_), causes(std::move(causes_)) {}
    std::string ko;
    std::vector<std::string> functions;  // guest (vmlinux) functions to compare
    int apply_exit = kExitGuest;
    std::vector<std::string> causes;        // substrings of apply's error (and check's refusals)
    std::vector<std::string> check_causes;  // for check if they differ ({} = causes)
    std::vector<std::string> applied;       // patches on the VM throughout (usually none)
};

class PatchRefusalsTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        // The module with an __ex_table builds (kbuild, ~15 s here) while
        // the guest boots.
        const std::string dir = test_guest_dir();
        release_ = read_file(dir + "/release");
        while (!release_.empty() && (release_.back() == '\n' || release_.back() == ' ')) release_.pop_back();
        char work[] = "/tmp/hvpatch-refusals-build-XXXXXX";
        if (!mkdtemp(work)) throw std::runtime_error("mkdtemp failed");
        build_dir_ = work;
        CommandOptions build_options;
        build_options.timeout = 300s;
        auto build = std::make_unique<RunningCommand>(
            std::vector<std::string>{"sh", "-c",
                                     "for m in livepatch-extable livepatch-fields; do mkdir \"$1/$m\" && "
                                     "cp -r \"$0/$m\"/. \"$1/$m\"/ && make -C /usr/src/linux-headers-\"$2\" "
                                     "M=\"$1/$m\" KBUILD_MODPOST_WARN=1 modules || exit 1; done",
                                     source_dir() + "/tests/integration/patches", build_dir_, release_},
            build_options);
        guest_ = TestGuest::boot().release();
        cmdline_ko_ = example_patch_ko(Example::Cmdline, guest_->release());
        test_modules_build_ = build->wait();
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        std::error_code ignored;
        if (!build_dir_.empty()) fs::remove_all(build_dir_, ignored);
    }

    void SetUp() override {
        ASSERT_NE(guest_, nullptr) << "the test guest did not boot";
        char work[] = "/tmp/hvpatch-refusals-XXXXXX";
        ASSERT_NE(mkdtemp(work), nullptr);
        dir_ = work;
        state_dir_ = dir_ + "/state";
        audit_log_ = dir_ + "/audit.jsonl";
    }
    void TearDown() override {
        std::error_code ignored;
        if (!dir_.empty()) fs::remove_all(dir_, ignored);
    }

    CommandResult hvpatch(std::vector<std::string> args, std::chrono::milliseconds timeout = 180s) {
        std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", state_dir_, "--audit-log", audit_log_};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv, timeout);
    }
    CommandResult apply(const std::string& ko, std::vector<std::string> extra = {}) {
        std::vector<std::string> args = {"apply", guest_->target(), ko, "--json"};
        args.insert(args.end(), extra.begin(), extra.end());
        return hvpatch(args);
    }
    CommandResult check(const std::string& ko) { return hvpatch({"check", guest_->target(), ko, "--json"}); }
    CommandResult revert(const std::string& name) { return hvpatch({"revert", guest_->target(), name, "--json"}); }

    // A copy of `bytes` in this test's directory.
    std::string write_copy(const std::string& name, std::string_view bytes) {
        std::string path = dir_ + "/" + name;
        write_file(path, bytes);
        return path;
    }

    static GuestSnapshot snapshot(const std::vector<std::string>& functions) {
        GuestSnapshot s;
        {
            auto machine = open_machine(guest_->target());
            PauseGuard pause(*machine);
            auto kernel = GuestKernel::open(*machine);
            for (const auto& name : functions) {
                auto bytes = kernel->memory().read_bytes(GuestVirtAddr{kernel->symbol(name)}, kEntryBytes);
                s.entries[name] = hex_bytes({reinterpret_cast<const char*>(bytes.data()), bytes.size()});
            }
        }  // the QMP connection is closed again: the CLI needs it
        s.module_allocs = guest_module_area_allocations(*guest_);
        return s;
    }

    // The state dir's records: file name -> contents, for *.json (the lock
    // file is left empty by every operation and is not a record).
    std::map<std::string, std::string> state_records() const {
        std::map<std::string, std::string> out;
        if (!fs::exists(state_dir_)) return out;
        for (const auto& entry : fs::directory_iterator(state_dir_))
            if (entry.path().extension() == ".json") out[entry.path().filename()] = read_file(entry.path());
        return out;
    }
    // The names of the patches the state dir records.
    std::vector<std::string> recorded_patches() const {
        std::vector<std::string> names;
        for (const auto& [file, text] : state_records()) {
            json record = json::parse(text);  // not a temporary in the range-for: it would dangle
            for (const auto& p : record.at("patches")) names.push_back(p.at("name"));
        }
        std::sort(names.begin(), names.end());
        return names;
    }
    // The patches `hvpatch status --json` lists.
    std::vector<std::string> status_patches() {
        CommandResult r = hvpatch({"status", guest_->target(), "--json"});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        std::vector<std::string> names;
        json report = json::parse(r.out);
        for (const auto& p : report.at("patches")) names.push_back(p.at("name"));
        std::sort(names.begin(), names.end());
        return names;
    }
    json last_audit_record() const {
        auto records = read_audit_log(audit_log_);
        return records.empty() ? json() : records.back();
    }
    void expect_audit_log_intact() const {
        AuditVerifyResult v = verify_audit_log(audit_log_);
        std::string problems;
        for (const auto& p : v.problems) problems += p + "\n";
        EXPECT_TRUE(v.ok) << problems;
    }

    // Runs apply and then check on `r.ko` and checks everything the header
    // comment lists.
    void expect_refused(const Refusal& r) {
        SCOPED_TRACE("module " + r.ko);
        std::vector<std::string> functions = r.functions;
        if (std::find(functions.begin(), functions.end(), "cmdline_proc_show") == functions.end())
            functions.push_back("cmdline_proc_show");
        std::vector<std::string> applied = r.applied;
        std::sort(applied.begin(), applied.end());

        const GuestSnapshot before = snapshot(functions);
        const auto records_before = state_records();
        ASSERT_EQ(recorded_patches(), applied);

        CommandResult a = apply(r.ko);
        std::cout << "[ apply    ] " << fs::path(r.ko).filename().string() << ": " << a.err;
        EXPECT_EQ(a.exit_code, r.apply_exit) << a.describe();
        EXPECT_EQ(a.term_signal, 0) << a.describe();
        json error;
        try {
            error = json::parse(a.out).at("error");
        } catch (const std::exception& e) {
            ADD_FAILURE() << "apply --json printed no error document (" << e.what() << "): " << a.describe();
        }
        const std::string message = error.is_object() ? error.value("message", "") : "";
        EXPECT_EQ(error.is_object() ? error.value("kind", "") : "", r.apply_exit == kExitUsage ? "usage" : "guest")
            << a.describe();
        for (const auto& cause : r.causes)
            EXPECT_NE(message.find(cause), std::string::npos) << "apply's error lacks '" << cause << "': " << message;

        const GuestSnapshot after_apply = snapshot(functions);
        EXPECT_EQ(after_apply, before) << "apply changed the guest; before:\n" << before << "after:\n" << after_apply;
        EXPECT_EQ(status_patches(), applied);
        EXPECT_EQ(state_records(), records_before) << "apply changed the state dir";

        json record = last_audit_record();
        EXPECT_EQ(record.value("operation", ""), "apply") << record.dump();
        EXPECT_EQ(record.value("outcome", ""), "refused") << record.dump();
        EXPECT_EQ(record.value("error", ""), message) << record.dump();
        EXPECT_EQ(record.value("/patch/path"_json_pointer, ""), r.ko) << record.dump();
        expect_audit_log_intact();

        CommandResult c = check(r.ko);
        EXPECT_EQ(c.exit_code, kExitGuest) << c.describe();
        json report;
        try {
            report = json::parse(c.out);
        } catch (const std::exception& e) {
            ADD_FAILURE() << "check --json printed no report (" << e.what() << "): " << c.describe();
        }
        EXPECT_EQ(report.value("ok", true), false) << c.describe();
        std::string refusals;
        if (report.contains("refusals"))
            for (const auto& text : report["refusals"]) refusals += text.get<std::string>() + "\n";
        std::cout << "[ check    ] " << fs::path(r.ko).filename().string() << ": " << refusals;
        for (const auto& cause : r.check_causes.empty() ? r.causes : r.check_causes)
            EXPECT_NE(refusals.find(cause), std::string::npos)
                << "check's refusals lack '" << cause << "': " << refusals;
        const GuestSnapshot after_check = snapshot(functions);
        EXPECT_EQ(after_check, before) << "check changed the guest; before:\n" << before << "after:\n" << after_check;
        EXPECT_EQ(state_records(), records_before) << "check changed the state dir";
        record = last_audit_record();
        EXPECT_EQ(record.value("operation", ""), "check") << record.dump();
        EXPECT_EQ(record.value("outcome", ""), "would-refuse") << record.dump();
        EXPECT_EQ(record.value("/patch/path"_json_pointer, ""), r.ko) << record.dump();
        expect_audit_log_intact();
    }

    // Applies `ko` (which must work), checks that /proc/cmdline is the
    // patched one, reverts `name` and checks that the guest is as before.
    void expect_apply_and_revert(const std::string& ko, const std::string& name, std::vector<std::string> extra = {}) {
        const GuestSnapshot before = snapshot({"cmdline_proc_show"});
        const std::string original = guest_->run_ok(std::string(kCmdlineOracle));
        CommandResult a = apply(ko, extra);
        ASSERT_EQ(a.exit_code, 0) << a.describe();
        EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
        EXPECT_EQ(status_patches(), std::vector<std::string>{name});
        CommandResult r = revert(name);
        ASSERT_EQ(r.exit_code, 0) << r.describe();
        EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), original);
        EXPECT_EQ(snapshot({"cmdline_proc_show"}), before) << "apply + revert did not restore the guest";
        EXPECT_TRUE(status_patches().empty());
        EXPECT_TRUE(recorded_patches().empty());
        expect_audit_log_intact();
    }

    void mount_tracefs() {
        TestGuest::Result mount =
            guest_->run("grep -q ' " + kTracing + " tracefs' /proc/mounts || mount -t tracefs nodev " + kTracing);
        ASSERT_EQ(mount.status, 0) << "mounting tracefs in the guest: " << mount.output;
    }

    static inline TestGuest* guest_ = nullptr;
    static inline std::string release_, cmdline_ko_, build_dir_;
    static inline CommandResult test_modules_build_;
    std::string dir_, state_dir_, audit_log_;
};

TEST_F(PatchRefusalsTest, NotAnElfFile) {
    std::string ko = write_copy("not_an_elf.ko", "this is a text file, not a kernel module\n");
    expect_refused(Refusal(ko, kExitUsage, {ko, "not an ELF file"}));
}

TEST_F(PatchRefusalsTest, TruncatedModule) {
    std::string ko = write_copy("truncated.ko", read_file(cmdline_ko_).substr(0, 1000));
    expect_refused(Refusal(ko, kExitUsage, {ko, "truncated or corrupt ELF"}));
}

TEST_F(PatchRefusalsTest, NotALivepatchModule) {
    // A real module of the guest's own kernel, built for this very release.
    std::string virtio = guest_->guest_dir() + "/lib/modules/" + release_ + "/kernel/drivers/virtio/virtio_balloon.ko";
    ASSERT_TRUE(fs::exists(virtio)) << virtio;
    std::string ko = write_copy("virtio_balloon.ko", read_file(virtio));
    expect_refused(Refusal(ko, kExitUsage, {ko, "not a livepatch module"}));

    // The example with its livepatch=Y entry renamed to another key.
    std::string stripped =
        write_copy("no_livepatch_tag.ko",
                   replace_unique(read_file(cmdline_ko_), c_string("livepatch=Y"), c_string("xivepatch=Y")));
    expect_refused(Refusal(stripped, kExitUsage, {stripped, "not a livepatch module"}));
}

TEST_F(PatchRefusalsTest, VermagicMismatchUnlessForced) {
    // Another release of the same length: the first digit of the ABI
    // number changed (6.1.0-56-amd64 -> 6.1.0-66-amd64).
    std::string other = release_;
    std::size_t digit = other.find('-') + 1;
    ASSERT_TRUE(digit < other.size() && std::isdigit(static_cast<unsigned char>(other[digit]))) << release_;
    other[digit] = static_cast<char>('0' + (other[digit] - '0' + 1) % 10);
    std::string ko =
        write_copy("livepatch_cmdline.ko",
                   replace_unique(read_file(cmdline_ko_), "vermagic=" + release_ + " ", "vermagic=" + other + " "));
    expect_refused(Refusal(ko, kExitGuest, {ko, "vermagic", "is for kernel " + other, "the guest runs " + release_}));

    // The operator's override loads it (the code is the same) and it reverts cleanly.
    expect_apply_and_revert(ko, "livepatch_cmdline", {"--force-vermagic"});
    CommandResult forced_check = hvpatch({"check", guest_->target(), ko, "--force-vermagic", "--json"});
    EXPECT_EQ(forced_check.exit_code, 0) << forced_check.describe();
}

TEST_F(PatchRefusalsTest, FunctionTheGuestLacks) {
    // klp_func.old_name "cmdline_proc_show" in .rodata.str1.1 becomes a
    // name no guest function has ("livepatch_cmdline_proc_show", the new
    // function's symbol, is another string and stays).
    ASSERT_TRUE(guest_->run_ok("grep -c ' cmdline_proc_shoX$' /proc/kallsyms || true") == "0\n");
    std::string ko = write_copy(
        "missing_function.ko",
        replace_unique(read_file(cmdline_ko_), c_string("cmdline_proc_show"), c_string("cmdline_proc_shoX")));
    expect_refused(Refusal(ko, kExitGuest, {"function cmdline_proc_shoX not found in vmlinux"}));
}

TEST_F(PatchRefusalsTest, FunctionWithoutTheFtraceNop) {
    // A guest function with a name as long as "cmdline_proc_show" whose
    // entry is not the ftrace NOP: noinstr code first (never instrumented),
    // then any other. Chosen at test time from the guest's symbols, its
    // address cross-checked with the guest's own /proc/kallsyms.
    const std::size_t length = std::string_view("cmdline_proc_show").size();
    std::string name;
    std::uint64_t address = 0;
    std::string entry;
    {
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        auto kernel = GuestKernel::open(*machine);
        const auto& symbols = kernel->symbols();
        const std::uint64_t noinstr_start = kernel->symbol("__noinstr_text_start");
        const std::uint64_t noinstr_end = kernel->symbol("__noinstr_text_end");
        std::vector<KernelSymbol> candidates;
        for (const auto& s : symbols.symbols())
            if (s.name.size() == length && (s.type == 't' || s.type == 'T') &&
                s.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") ==
                    std::string::npos)
                candidates.push_back(s);
        std::stable_partition(candidates.begin(), candidates.end(), [&](const KernelSymbol& s) {
            return s.address.value >= noinstr_start && s.address.value < noinstr_end;
        });
        for (const auto& s : candidates) {
            if (symbols.find_all(s.name).size() != 1) continue;
            auto bytes = kernel->memory().read_bytes(s.address, 16);
            std::string head(reinterpret_cast<const char*>(bytes.data()), bytes.size());
            if (head.compare(0, 5, kFtraceNop) == 0) continue;
            if (head.compare(0, 4, kEndbr64) == 0 && head.compare(4, 5, kFtraceNop) == 0) continue;
            name = s.name;
            address = s.address.value;
            entry = head;
            break;
        }
        std::cout << "[ no NOP   ] " << candidates.size() << " candidates of " << length << " characters; chose "
                  << name << " at " << hex(address) << " ("
                  << (address >= noinstr_start && address < noinstr_end ? "noinstr" : "not noinstr")
                  << "): " << hex_bytes(entry) << "\n";
    }
    ASSERT_FALSE(name.empty()) << "no guest function of " << length << " characters without the ftrace NOP";
    ASSERT_NE(entry.substr(0, 5), kFtraceNop);
    ASSERT_NE(entry.substr(4, 5), kFtraceNop);
    std::string line = guest_->run_ok("grep ' " + name + "$' /proc/kallsyms");
    EXPECT_EQ(line.substr(0, 16), hex(address).substr(2)) << line;
    EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;

    std::string ko = write_copy("no_ftrace_nop.ko",
                                replace_unique(read_file(cmdline_ko_), c_string("cmdline_proc_show"), c_string(name)));
    Refusal refusal(ko, kExitGuest, {"entry of " + name + " at " + hex(address), "is not the ftrace NOP"});
    refusal.functions = {name};
    expect_refused(refusal);
}

TEST_F(PatchRefusalsTest, FunctionTracedByTheGuestsFtrace) {
    mount_tracefs();
    ASSERT_EQ(guest_->run_ok("cat " + kTracing + "/current_tracer"), "nop\n");
    guest_->run_ok("echo cmdline_proc_show > " + kTracing + "/set_ftrace_filter");
    guest_->run_ok("echo function > " + kTracing + "/current_tracer");
    // The guest's ftrace really calls out of the entry now.
    guest_->run_ok(std::string(kCmdlineOracle));
    EXPECT_NE(guest_->run_ok("grep -c cmdline_proc_show " + kTracing + "/trace || true"), "0\n");

    expect_refused(
        Refusal(cmdline_ko_, kExitGuest, {"entry of cmdline_proc_show", "is not the ftrace NOP", "call to"}));

    guest_->run_ok("echo nop > " + kTracing + "/current_tracer");
    guest_->run_ok("echo > " + kTracing + "/set_ftrace_filter");
    guest_->run_ok("echo > " + kTracing + "/trace");
    // With tracing off the entry is the NOP again and the same module loads.
    expect_apply_and_revert(cmdline_ko_, "livepatch_cmdline");
}

TEST_F(PatchRefusalsTest, ExceptionTable) {
    ASSERT_EQ(test_modules_build_.exit_code, 0)
        << "building tests/integration/patches/livepatch-extable: " << test_modules_build_.describe();
    std::string ko = build_dir_ + "/livepatch-extable/livepatch_extable.ko";
    ASSERT_TRUE(fs::exists(ko)) << test_modules_build_.describe();
    expect_refused(Refusal(ko, kExitGuest, {ko, "section __ex_table", "exception table with 1 entries"}));
}

TEST_F(PatchRefusalsTest, UnknownAllocSection) {
    // .rodata.str1.1 (the strings, SHF_ALLOC) renamed in .shstrtab to a
    // section name the guest kernel's loader gives no meaning to.
    std::string ko = write_copy("unknown_section.ko", replace_unique(read_file(cmdline_ko_), c_string(".rodata.str1.1"),
                                                                     c_string(".hvpatch.test1")));
    expect_refused(Refusal(ko, kExitGuest, {ko, "section .hvpatch.test1", "unknown SHF_ALLOC section"}));
}

TEST_F(PatchRefusalsTest, GuestLivepatchInTransition) {
    const auto& sleeper = example_patch(Example::Sleeper);
    std::string guest_ko = put_example_patch(*guest_, Example::Sleeper);
    guest_insmod(*guest_, guest_ko);
    // The sleeping workloads hold the guest's transition for ~16 s.
    ASSERT_EQ(guest_livepatch_transition(*guest_, sleeper.module), "1");
    const auto started = std::chrono::steady_clock::now();
    Refusal refusal(cmdline_ko_, kExitGuest, {"livepatch is in a transition"});
    refusal.check_causes = {"a livepatch transition is in progress in the guest"};
    expect_refused(refusal);
    const auto refusals_took =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    std::cout << "[ klp      ] apply and check refused within " << refusals_took.count()
              << " ms of the guest's transition start\n";
    // Still in transition: the refusals were for the right reason.
    EXPECT_EQ(guest_livepatch_transition(*guest_, sleeper.module), "1")
        << "the guest's transition ended during the refusals: they may not have been about it";

    EXPECT_EQ(wait_guest_livepatch_transition(*guest_, sleeper.module, 60s), "0");
    guest_livepatch_disable(*guest_, sleeper.module);
    // After the unpatching transition the guest frees the patch and its
    // sysfs directory, from a work item: "0" can show in between.
    std::string state = wait_guest_livepatch_transition(*guest_, sleeper.module, 60s);
    EXPECT_TRUE(state == "0" || state == "gone") << state;
    wait_guest_livepatch_gone(*guest_, sleeper.module, 30s);
    guest_rmmod(*guest_, sleeper.module);
    EXPECT_EQ(guest_->run("grep -w " + std::string(sleeper.module) + " /proc/modules").status, 1)
        << sleeper.module << " is still loaded";
    // Once the guest's own livepatch is done, hvpatch loads the module.
    expect_apply_and_revert(cmdline_ko_, "livepatch_cmdline");
}

// A cumulative patch with nothing to replace applies like any patch
// (replacing others: test_patch_streams.cpp).
TEST_F(PatchRefusalsTest, ReplaceWithNothingToReplaceAppliesAsUsual) {
    ASSERT_EQ(test_modules_build_.exit_code, 0) << "building tests/integration/patches: " << test_modules_build_.describe();
    const std::string ko = build_dir_ + "/livepatch-fields/livepatch_replace.ko";
    const std::string version = guest_->run_ok("cat /proc/version");
    CommandResult a = apply(ko);
    ASSERT_EQ(a.exit_code, 0) << a.describe();
    EXPECT_EQ(guest_->run_ok("cat /proc/version"), "livepatch_replace\n");
    CommandResult r = revert("livepatch_replace");
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_EQ(guest_->run_ok("cat /proc/version"), version);
    EXPECT_TRUE(recorded_patches().empty());
}

TEST_F(PatchRefusalsTest, PatchAlreadyApplied) {
    CommandResult first = apply(cmdline_ko_);
    ASSERT_EQ(first.exit_code, 0) << first.describe();
    Refusal refusal(cmdline_ko_, kExitUsage, {"patch livepatch_cmdline is already on"});
    refusal.check_causes = {"patch livepatch_cmdline is already on this VM (applied)"};
    refusal.applied = {"livepatch_cmdline"};
    expect_refused(refusal);
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    CommandResult r = revert("livepatch_cmdline");
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_NE(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    EXPECT_TRUE(recorded_patches().empty());
}

// Last (tests run in the order of this file): all of the above left no
// kernel problem behind.
TEST_F(PatchRefusalsTest, ConsoleShowsNoKernelProblem) {
    auto problems = kernel_problem_lines(guest_->console_log());
    std::string text;
    for (const auto& line : problems) text += line + "\n";
    EXPECT_TRUE(problems.empty()) << text;
}

}  // namespace
}  // namespace hvpatch::test
