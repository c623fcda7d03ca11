// QemuMachine over a scripted QemuMonitor (what a libvirt domain gives it):
// run control goes through the monitor's stop/cont, the run state found is
// restored, and the private gdbstub directory belongs to QEMU's user (the
// domain's DAC label) before QEMU is asked to create its socket there.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <vector>

#include "hvpatch/error.h"
#include "test_data.h"
#include "vmm/qemu/qemu_machine.h"

namespace hvpatch {
namespace {

struct SeenDir {
    bool exists = false;
    uid_t uid = 0;
    gid_t gid = 0;
    mode_t mode = 0;
};

class ScriptedMonitor final : public QemuMonitor {
public:
    ScriptedMonitor(bool running, std::vector<std::string>& log, std::string& gdb_dir, SeenDir& seen)
        : running_(running), log_(log), gdb_dir_(gdb_dir), seen_(seen) {}
    nlohmann::json execute(const std::string& command, const nlohmann::json&) override {
        if (command == "query-status") return {{"status", running_ ? "running" : "paused"}, {"running", running_}};
        if (command == "query-cpus-fast") return nlohmann::json::array({{{"cpu-index", 0}}});
        if (command == "query-memory-size-summary") return {{"base-memory", 512ULL << 20}};
        if (command == "query-chardev") return nlohmann::json::array();
        throw Error(ErrorKind::Guest, "scripted: QMP '" + command + "' failed: CommandNotFound");
    }
    std::string hmp(const std::string& line) override {
        if (line == "info mtree") return test::read_test_data("qemu-7.2-q35-512M-mtree.txt");
        const std::string prefix = "gdbserver unix:";
        if (line.rfind(prefix, 0) == 0) {
            std::string path = line.substr(prefix.size(), line.find(',') - prefix.size());
            gdb_dir_ = path.substr(0, path.rfind('/'));
            struct stat st {};
            if (::stat(gdb_dir_.c_str(), &st) == 0) seen_ = {true, st.st_uid, st.st_gid, st.st_mode & 07777};
            throw Error(ErrorKind::Unreachable, "scripted: no QEMU behind this monitor");
        }
        throw Error(ErrorKind::Guest, "scripted: HMP '" + line + "'");
    }
    void stop() override { log_.push_back("stop"); }
    void cont() override { log_.push_back("cont"); }
    bool qemu_on_this_host() const override { return false; }

private:
    bool running_;
    std::vector<std::string>& log_;
    std::string& gdb_dir_;
    SeenDir& seen_;
};

SeenDir gdb_dir_seen_by_qemu(std::optional<std::pair<uid_t, gid_t>> owner, std::string* dir_out = nullptr) {
    std::vector<std::string> log;
    std::string dir;
    SeenDir seen;
    QemuMachineOptions options;
    options.gdb_socket_owner = owner;
    {
        QemuMachine machine(std::make_unique<ScriptedMonitor>(false, log, dir, seen), "domain t (test:///)", options);
        EXPECT_THROW(machine.read_registers(0), Error);
    }
    if (dir_out) *dir_out = dir;
    return seen;
}

TEST(QemuMachineOverAMonitor, GdbstubDirectoryBelongsToQemusUserBeforeTheSocketIsMade) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (to give a directory away)";
    std::string dir;
    SeenDir seen = gdb_dir_seen_by_qemu(std::pair<uid_t, gid_t>{65534, 65533}, &dir);
    ASSERT_TRUE(seen.exists) << "the directory existed when QEMU was asked to listen in it";
    EXPECT_EQ(seen.uid, 65534u);
    EXPECT_EQ(seen.gid, 65533u);
    EXPECT_EQ(seen.mode, 0700u);
    EXPECT_EQ(dir.rfind("/tmp/hvpatch-gdb.", 0), 0u) << dir;
    EXPECT_FALSE(std::filesystem::exists(dir)) << "removed again when the machine is closed";
}

TEST(QemuMachineOverAMonitor, GdbstubDirectoryStaysRootsForRootOrNoLabel) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (the directory's owner is the test's user)";
    for (auto owner : {std::optional<std::pair<uid_t, gid_t>>{}, std::optional<std::pair<uid_t, gid_t>>{{0, 0}}}) {
        SeenDir seen = gdb_dir_seen_by_qemu(owner);
        ASSERT_TRUE(seen.exists);
        EXPECT_EQ(seen.uid, 0u);
        EXPECT_EQ(seen.mode, 0700u);
    }
}

TEST(QemuMachineOverAMonitor, PauseAndResumeGoThroughTheMonitorAndTheFoundStateIsRestored) {
    std::vector<std::string> log;
    std::string dir;
    SeenDir seen;
    {
        QemuMachine machine(std::make_unique<ScriptedMonitor>(true, log, dir, seen), "domain t (test:///)");
        EXPECT_EQ(machine.run_state(), RunState::Running);
        machine.pause();
        machine.pause();
        EXPECT_EQ(machine.run_state(), RunState::Paused);
        machine.resume();
        machine.pause();
    }
    EXPECT_EQ(log, (std::vector<std::string>{"stop", "cont", "stop", "cont"}));
}

}  // namespace
}  // namespace hvpatch
