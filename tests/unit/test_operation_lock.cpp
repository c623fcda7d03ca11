#include "patch/operation_lock.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "hvpatch/error.h"
#include "patch/host_identity.h"
#include "temp_dir.h"

namespace hvpatch {
namespace {

using test::TempDir;
using test::read_text;

// The Busy error message of acquiring `key`, or "" if it was acquired.
std::string busy_message(const std::string& dir, const std::string& key) {
    try {
        OperationLock lock = OperationLock::acquire(dir, key, "status");
        return "";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Busy) << e.what();
        return e.what();
    }
}

TEST(OperationLock, HolderWritesItsDescriptionIntoTheLockFile) {
    TempDir dir;
    OperationLock lock = OperationLock::acquire(dir.path(), "vm1", "apply");
    EXPECT_TRUE(lock.held());
    EXPECT_EQ(lock.path(), dir.file("vm1.lock"));
    auto d = nlohmann::json::parse(read_text(dir.file("vm1.lock")));
    EXPECT_EQ(d["pid"], ::getpid());
    EXPECT_EQ(d["uid"], ::getuid());
    EXPECT_EQ(d["operation"], "apply");
    EXPECT_EQ(d["host"], host_name());
    EXPECT_EQ(d["since"].get<std::string>().size(), std::string("2026-11-27T05:40:12.345Z").size());
    struct stat st {};
    ASSERT_EQ(::stat(lock.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(OperationLock, SecondAcquireIsBusyAndNamesTheHolder) {
    TempDir dir;
    OperationLock lock = OperationLock::acquire(dir.path(), "vm1", "apply");
    std::string msg = busy_message(dir.path(), "vm1");
    EXPECT_NE(msg.find("VM vm1 is busy: hvpatch pid " + std::to_string(::getpid())), std::string::npos) << msg;
    EXPECT_NE(msg.find("(user " + describe_user(current_user()) + ")"), std::string::npos) << msg;
    EXPECT_NE(msg.find("has been running 'apply' since 20"), std::string::npos) << msg;
    EXPECT_NE(msg.find(dir.file("vm1.lock")), std::string::npos) << msg;
    // Another VM is not affected.
    EXPECT_EQ(busy_message(dir.path(), "vm2"), "");
}

TEST(OperationLock, ReleaseAndDestructionFreeTheLockAndEmptyTheFile) {
    TempDir dir;
    {
        OperationLock lock = OperationLock::acquire(dir.path(), "vm1", "apply");
    }
    EXPECT_EQ(read_text(dir.file("vm1.lock")), "");
    OperationLock lock = OperationLock::acquire(dir.path(), "vm1", "revert");
    lock.release();
    EXPECT_FALSE(lock.held());
    lock.release();  // idempotent
    EXPECT_EQ(busy_message(dir.path(), "vm1"), "");
}

TEST(OperationLock, MovedLockStaysHeldAndMovedFromReleasesNothing) {
    TempDir dir;
    OperationLock first = OperationLock::acquire(dir.path(), "vm1", "apply");
    OperationLock second = std::move(first);
    EXPECT_FALSE(first.held());
    EXPECT_TRUE(second.held());
    first.release();
    EXPECT_NE(busy_message(dir.path(), "vm1"), "");
    OperationLock other = OperationLock::acquire(dir.path(), "vm2", "apply");
    other = std::move(second);  // vm2 released, vm1 now held by `other`
    EXPECT_EQ(busy_message(dir.path(), "vm2"), "");
    EXPECT_NE(busy_message(dir.path(), "vm1"), "");
    EXPECT_EQ(other.vm_key(), "vm1");
}

TEST(OperationLock, OtherProcessIsRefusedAndTheLockIsFreedWhenTheHolderIsKilled) {
    TempDir dir;
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::close(ready[0]);
        try {
            OperationLock lock = OperationLock::acquire(dir.path(), "vm1", "apply");
            (void)!::write(ready[1], "1", 1);
            for (;;) ::pause();
        } catch (...) {
            ::_exit(1);
        }
    }
    ::close(ready[1]);
    char c = 0;
    ASSERT_EQ(::read(ready[0], &c, 1), 1) << "child could not take the lock";
    ::close(ready[0]);

    std::string msg = busy_message(dir.path(), "vm1");
    EXPECT_NE(msg.find("hvpatch pid " + std::to_string(child) + " "), std::string::npos) << msg;
    EXPECT_NE(msg.find("'apply'"), std::string::npos) << msg;

    // SIGKILL: no destructor runs, the kernel drops the flock with the process.
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status));
    // The dead holder's description is still in the file...
    EXPECT_NE(read_text(dir.file("vm1.lock")).find(std::to_string(child)), std::string::npos);
    // ...and, without taking the lock, it is an operation that did not finish...
    std::string unfinished = unfinished_operation(dir.path(), "vm1");
    EXPECT_EQ(nlohmann::json::parse(unfinished)["pid"], child) << unfinished;
    EXPECT_EQ(describe_unfinished_operation(unfinished).find("'apply' by hvpatch pid " + std::to_string(child) + " (user "),
              0u)
        << describe_unfinished_operation(unfinished);
    EXPECT_NE(describe_unfinished_operation(unfinished).find(", did not finish"), std::string::npos);
    // ...but the lock is free; the new holder learns what the dead one
    // wrote, and replaces the description with its own.
    OperationLock lock = OperationLock::acquire(dir.path(), "vm1", "revert");
    EXPECT_EQ(lock.previous_holder(), unfinished);
    auto d = nlohmann::json::parse(read_text(dir.file("vm1.lock")));
    EXPECT_EQ(d["pid"], ::getpid());
    EXPECT_EQ(d["operation"], "revert");
    // While it is held, nothing is unfinished.
    EXPECT_EQ(unfinished_operation(dir.path(), "vm1"), "");
}

TEST(OperationLock, AfterANormalReleaseThereIsNoPreviousHolderNorUnfinishedOperation) {
    TempDir dir;
    EXPECT_EQ(unfinished_operation(dir.path(), "vm1"), "");  // no lock file at all
    { OperationLock first = OperationLock::acquire(dir.path(), "vm1", "apply"); }
    EXPECT_EQ(unfinished_operation(dir.path(), "vm1"), "");
    OperationLock second = OperationLock::acquire(dir.path(), "vm1", "apply");
    EXPECT_EQ(second.previous_holder(), "");
}

TEST(OperationLock, DescribeAddsToTheHolderDescription) {
    TempDir dir;
    OperationLock lock = OperationLock::acquire(dir.path(), "vm1", "apply");
    lock.describe("vm_running", true);
    auto d = nlohmann::json::parse(read_text(dir.file("vm1.lock")));
    EXPECT_EQ(d["vm_running"], true);
    EXPECT_EQ(d["operation"], "apply");
    EXPECT_EQ(d["pid"], ::getpid());
    lock.release();
    EXPECT_EQ(read_text(dir.file("vm1.lock")), "");
    EXPECT_THROW(lock.describe("vm_running", false), Error);
}

TEST(OperationLock, AnUnparsableLeftoverIsStillReportedAsUnfinished) {
    TempDir dir;
    std::ofstream(dir.file("vm1.lock")) << "garbage";
    EXPECT_EQ(unfinished_operation(dir.path(), "vm1"), "garbage");
    EXPECT_NE(describe_unfinished_operation("garbage").find("did not finish"), std::string::npos);
    OperationLock lock = OperationLock::acquire(dir.path(), "vm1", "apply");
    EXPECT_EQ(lock.previous_holder(), "garbage");
}

TEST(OperationLock, KeysThatAreNotPlainFileNamesAreRefused) {
    TempDir dir;
    for (const std::string& bad : std::vector<std::string>{"", "../vm1", "a/b", ".hidden", "..", "vm 1", std::string(201, 'a')}) {
        try {
            (void)OperationLock::acquire(dir.path(), bad, "apply");
            ADD_FAILURE() << "accepted key '" << bad << "'";
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Usage) << e.what();
        }
    }
    EXPECT_EQ(dir.entries(), std::vector<std::string>{});
    // MachineIdentity::key() style keys of a long socket path fit.
    EXPECT_NO_THROW((void)OperationLock::acquire(dir.path(), "target-qmp__" + std::string(188, 'x'), "apply"));
}

TEST(OperationLock, VmLockKeyMakesSafeDistinctNames) {
    EXPECT_EQ(vm_lock_key("vm1"), "vm1");
    EXPECT_EQ(vm_lock_key("web-1.example_a"), "web-1.example_a");
    std::string socket = vm_lock_key("qmp:/run/vm1.sock");
    EXPECT_EQ(socket.substr(0, 18), "qmp__run_vm1.sock-");
    EXPECT_EQ(socket.size(), 18u + 12u);
    EXPECT_NE(vm_lock_key("a/b"), vm_lock_key("a_b"));
    EXPECT_NE(vm_lock_key("a/b"), vm_lock_key("a:b"));
    EXPECT_NE(vm_lock_key(std::string(150, 'x')), vm_lock_key(std::string(151, 'x')));
    TempDir dir;
    for (const std::string& identity : std::vector<std::string>{"qmp:/run/vm1.sock", "..", "", ".x", std::string(300, '/'), std::string(150, 'x'),
                                 std::string("\xff\x00z", 3)}) {
        std::string key = vm_lock_key(identity);
        EXPECT_NO_THROW((void)OperationLock::acquire(dir.path(), key, "apply")) << key;
    }
}

TEST(OperationLock, DefaultStateDirComesFromTheEnvironmentAndIsCreated0700) {
    TempDir dir;
    std::string wanted = dir.file("state/hvpatch");
    ::setenv("HVPATCH_STATE_DIR", wanted.c_str(), 1);
    std::string got = default_state_dir();
    ::unsetenv("HVPATCH_STATE_DIR");
    EXPECT_EQ(got, wanted);
    struct stat st {};
    ASSERT_EQ(::stat(wanted.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0700u);
}

}  // namespace
}  // namespace hvpatch
