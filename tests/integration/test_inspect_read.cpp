// `hvpatch inspect` and `hvpatch read` agree byte for byte and register for
// register with QEMU's own monitor on a paused real guest, with and without
// a shared RAM file (then read out of the QEMU process) and with 5-level
// paging (-cpu max); and `read --virt`
// finds what the guest itself says is at a kernel symbol.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "hvpatch/address.h"
#include "support/monitor_oracle.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

struct SharedRam {
    static TestGuestOptions options() { return {}; }
    static constexpr const char* kPath = "mapped-file";
    static constexpr const char* kPathText = "mapped RAM file";
    static constexpr bool kFiveLevel = false;
};
struct PlainRam {
    static TestGuestOptions options() {
        TestGuestOptions o;
        o.shared_ram = false;
        return o;
    }
    static constexpr const char* kPath = "process-memory";
    static constexpr const char* kPathText = "the memory of QEMU process";
    static constexpr bool kFiveLevel = false;
};
struct FiveLevelPaging {
    static TestGuestOptions options() {
        TestGuestOptions o;
        o.cpu_model = "max";
        return o;
    }
    static constexpr const char* kPath = "mapped-file";
    static constexpr const char* kPathText = "mapped RAM file";
    static constexpr bool kFiveLevel = true;
};

CommandResult hvpatch(const std::vector<std::string>& args) {
    std::vector<std::string> argv{hvpatch_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, 120s);
}

std::uint64_t from_hex(const nlohmann::json& v) { return std::stoull(v.get<std::string>(), nullptr, 16); }

std::vector<std::uint8_t> hex_bytes(const std::string& hex) {
    std::vector<std::uint8_t> out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        out.push_back(static_cast<std::uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
    return out;
}

template <typename Config>
class InspectReadTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { guest_ = TestGuest::boot(Config::options()).release(); }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }

    static MonitorOracle monitor() { return MonitorOracle(guest_->vm().qmp_socket_path()); }

    // hvpatch's JSON output of a command that must succeed.
    static nlohmann::json json_of(const std::vector<std::string>& args) {
        CommandResult r = hvpatch(args);
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        return nlohmann::json::parse(r.out);
    }

    static std::vector<std::uint8_t> read_bytes(const std::vector<std::string>& args) {
        return hex_bytes(json_of(args)["hex"].get<std::string>());
    }

    static TestGuest* guest_;
};
template <typename Config>
TestGuest* InspectReadTest<Config>::guest_ = nullptr;

using Configs = ::testing::Types<SharedRam, PlainRam, FiveLevelPaging>;
TYPED_TEST_SUITE(InspectReadTest, Configs);

TYPED_TEST(InspectReadTest, RegistersMatchInfoRegistersOnAPausedGuest) {
    MonitorOracle mon = this->monitor();
    nlohmann::json doc;
    std::vector<MonitorRegisters> expected;
    {
        OperatorPause pause(mon);
        doc = this->json_of({"inspect", this->guest_->target(), "--json"});
        expected = mon.registers();
        EXPECT_EQ(mon.status(), "paused") << "a VM the operator paused must stay paused";
    }

    EXPECT_EQ(doc["run_state"], "paused");
    EXPECT_EQ(doc["memory"]["path"], TypeParam::kPath);
    EXPECT_EQ(doc["memory"]["ram_size"], 512ULL << 20);
    ASSERT_EQ(doc["vcpus"].size(), 2u);
    ASSERT_EQ(expected.size(), 2u);
    const std::vector<std::pair<const char*, const char*>> names = {
        {"rax", "RAX"}, {"rbx", "RBX"}, {"rcx", "RCX"}, {"rdx", "RDX"}, {"rsi", "RSI"},  {"rdi", "RDI"},
        {"rbp", "RBP"}, {"rsp", "RSP"}, {"r8", "R8"},   {"r9", "R9"},   {"r10", "R10"},  {"r11", "R11"},
        {"r12", "R12"}, {"r13", "R13"}, {"r14", "R14"}, {"r15", "R15"}, {"rip", "RIP"},  {"rflags", "RFL"},
        {"cs", "CS"},   {"ss", "SS"},   {"ds", "DS"},   {"es", "ES"},   {"fs", "FS"},    {"gs", "GS"},
        {"fs_base", "FS_BASE"}, {"gs_base", "GS_BASE"}, {"cr0", "CR0"}, {"cr2", "CR2"}, {"cr3", "CR3"},
        {"cr4", "CR4"}, {"efer", "EFER"}};
    for (std::size_t cpu = 0; cpu < 2; ++cpu) {
        const auto& ours = doc["vcpus"][cpu];
        EXPECT_EQ(ours["index"], cpu);
        for (const auto& [field, qemu_name] : names) {
            ASSERT_TRUE(expected[cpu].count(qemu_name)) << "monitor lacks " << qemu_name;
            EXPECT_EQ(from_hex(ours[field]), expected[cpu][qemu_name]) << "vCPU " << cpu << " " << field;
        }
        EXPECT_EQ(ours["cpl"].get<std::uint64_t>(), expected[cpu]["CPL"]) << "vCPU " << cpu;
        bool la57 = (from_hex(ours["cr4"]) >> 12) & 1;
        EXPECT_EQ(la57, TypeParam::kFiveLevel) << "CR4.LA57 of vCPU " << cpu;
    }
}

TYPED_TEST(InspectReadTest, PhysicalReadsMatchXp) {
    MonitorOracle mon = this->monitor();
    OperatorPause pause(mon);
    auto regs = mon.registers();
    std::uint64_t text = mon.gva2gpa(0, regs[0]["RIP"]) & ~0xfffULL;
    for (std::uint64_t addr : std::vector<std::uint64_t>{0x1000, text, (512ULL << 20) - 0x100}) {
        SCOPED_TRACE("physical " + hex(addr));
        auto ours = this->read_bytes({"read", this->guest_->target(), "--phys", hex_short(addr), "256", "--json"});
        EXPECT_EQ(ours, mon.physical_bytes(addr, 256));
    }
}

TYPED_TEST(InspectReadTest, VirtualReadsMatchTheMonitorsX) {
    MonitorOracle mon = this->monitor();
    OperatorPause pause(mon);
    auto regs = mon.registers();
    for (int cpu : {0, 1}) {
        std::uint64_t rip = regs[static_cast<std::size_t>(cpu)]["RIP"];
        if (regs[static_cast<std::size_t>(cpu)]["CPL"] != 0) continue;  // user RIPs are covered by --phys
        SCOPED_TRACE("vCPU " + std::to_string(cpu) + " RIP " + hex(rip));
        auto ours = this->read_bytes(
            {"read", this->guest_->target(), "--virt", "--vcpu", std::to_string(cpu), hex_short(rip), "128", "--json"});
        EXPECT_EQ(ours, mon.virtual_bytes(cpu, rip, 128));
        // The same bytes through an explicit CR3.
        auto by_cr3 = this->read_bytes({"read", this->guest_->target(), "--virt", "--cr3",
                                        hex_short(regs[static_cast<std::size_t>(cpu)]["CR3"]), hex_short(rip), "128",
                                        "--json"});
        EXPECT_EQ(by_cr3, ours);
    }
}

TYPED_TEST(InspectReadTest, VirtualReadOfLinuxBannerEqualsProcVersionInTheGuest) {
    // The guest's own view: where linux_banner is (KASLR applies) and what
    // /proc/version prints from it.
    std::string line = this->guest_->run_ok("grep ' linux_banner$' /proc/kallsyms");
    std::uint64_t banner = std::stoull(line.substr(0, 16), nullptr, 16);
    ASSERT_GE(banner, 0xffffffff80000000ULL) << line;
    std::string version = this->guest_->run_ok("cat /proc/version");
    ASSERT_GT(version.size(), 20u);

    // A running VM: hvpatch pauses it, reads, and resumes it.
    CommandResult r = hvpatch({"read", this->guest_->target(), "--virt", hex_short(banner),
                               std::to_string(version.size()), "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    auto bytes = hex_bytes(nlohmann::json::parse(r.out)["hex"]);
    EXPECT_EQ(std::string(bytes.begin(), bytes.end()), version);
    EXPECT_EQ(this->monitor().status(), "running") << "a running VM must be running again";
    EXPECT_EQ(this->guest_->run_ok("echo alive"), "alive\n");
}

TYPED_TEST(InspectReadTest, ReadsOutsideRamAndUnmappedAddressesFailAsGuestErrors) {
    CommandResult past_end = hvpatch({"read", this->guest_->target(), "--phys", hex_short((512ULL << 20) - 8), "16"});
    EXPECT_EQ(past_end.exit_code, 4) << past_end.describe();
    EXPECT_NE(past_end.err.find("not guest RAM"), std::string::npos) << past_end.err;
    EXPECT_NE(past_end.err.find(this->guest_->target()), std::string::npos) << past_end.err;

    // The non-canonical hole between user and kernel halves is never mapped.
    std::uint64_t hole = TypeParam::kFiveLevel ? 0x0100000000000000ULL : 0x0000800000000000ULL;
    CommandResult unmapped = hvpatch({"read", this->guest_->target(), "--virt", hex_short(hole), "16"});
    EXPECT_EQ(unmapped.exit_code, 4) << unmapped.describe();
    EXPECT_NE(unmapped.err.find(hex_short(hole).substr(2)), std::string::npos) << unmapped.err;

    // An unmapped kernel address: the guard hole at the start of the kernel half.
    std::uint64_t guard = TypeParam::kFiveLevel ? 0xff00000000000000ULL : 0xffff800000000000ULL;
    CommandResult not_present = hvpatch({"read", this->guest_->target(), "--virt", hex_short(guard), "16"});
    EXPECT_EQ(not_present.exit_code, 4) << not_present.describe();
    EXPECT_NE(not_present.err.find("not present"), std::string::npos) << not_present.err;
    EXPECT_EQ(this->monitor().status(), "running");
}

TYPED_TEST(InspectReadTest, HumanOutputNamesTheMemoryPath) {
    CommandResult r = hvpatch({"inspect", this->guest_->target()});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_NE(r.out.find(TypeParam::kPathText), std::string::npos) << r.out;
    EXPECT_EQ(r.err.find("notice"), std::string::npos) << "the fastest path for this VM is in use: " << r.err;
    EXPECT_NE(r.out.find("Accelerator:  tcg"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace hvpatch::test
