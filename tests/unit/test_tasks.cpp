// Task-list walking and task state letters on synthetic memory.
#include <gtest/gtest.h>

#include "region_memory.h"

#include <chrono>
#include <cstring>
#include <map>

#include "hvpatch/error.h"
#include "introspect/guest_list.h"
#include "introspect/kernel_constants.h"
#include "introspect/tasks.h"

namespace hvpatch {
namespace {

// Sparse guest memory: one mapped 8-byte word per list node.
class WordMemory : public test::RegionMemory {
public:
    void set(std::uint64_t addr, std::uint64_t value) {
        map(addr, 8);
        write64(addr, value);
    }
};

constexpr std::uint64_t kHead = 0xffffffff82000000ULL;
constexpr std::uint64_t kNodeOffset = 0x890;  // where `tasks` sits in a task

std::uint64_t node(int i) { return 0xffff888000100000ULL + 0x4000ULL * static_cast<unsigned>(i) + kNodeOffset; }

TEST(GuestListTest, WalksACircularListInOrder) {
    WordMemory mem;
    mem.set(kHead, node(0));
    mem.set(node(0), node(1));
    mem.set(node(1), node(2));
    mem.set(node(2), kHead);
    auto entries = walk_list(mem, kHead, kNodeOffset, 100, "tasks");
    ASSERT_EQ(entries.size(), 3u);
    EXPECT_EQ(entries[0], node(0) - kNodeOffset);
    EXPECT_EQ(entries[2], node(2) - kNodeOffset);
}

TEST(GuestListTest, EmptyListHasNoEntries) {
    WordMemory mem;
    mem.set(kHead, kHead);
    EXPECT_TRUE(walk_list(mem, kHead, kNodeOffset, 100, "tasks").empty());
}

TEST(GuestListTest, CycleNotThroughTheHeadIsRefusedQuickly) {
    WordMemory mem;
    mem.set(kHead, node(0));
    mem.set(node(0), node(1));
    mem.set(node(1), node(0));  // loops without coming back to the head
    auto start = std::chrono::steady_clock::now();
    try {
        walk_list(mem, kHead, kNodeOffset, 1 << 20, "init_task.tasks");
        FAIL() << "a cyclic list was accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        EXPECT_NE(std::string(e.what()).find("loops"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("init_task.tasks"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST(GuestListTest, DanglingPointerNamesTheNode) {
    WordMemory mem;
    mem.set(kHead, node(0));
    mem.set(node(0), node(7));  // node 7 is not mapped
    try {
        walk_list(mem, kHead, kNodeOffset, 100, "tasks");
        FAIL() << "a dangling list was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(hex(node(7))), std::string::npos) << e.what();
    }
}

TEST(GuestListTest, LongerThanTheLimitIsRefused) {
    WordMemory mem;
    mem.set(kHead, node(0));
    for (int i = 0; i < 50; ++i) mem.set(node(i), node(i + 1));
    mem.set(node(50), kHead);
    EXPECT_THROW(walk_list(mem, kHead, kNodeOffset, 10, "tasks"), Error);
    EXPECT_EQ(walk_list(mem, kHead, kNodeOffset, 51, "tasks").size(), 51u);
}

TEST(TaskStateTest, LettersFollowProcArrayC) {
    using namespace kconst;
    EXPECT_EQ(task_state_letter(kTaskRunning, 0), 'R');
    EXPECT_EQ(task_state_letter(kTaskInterruptible, 0), 'S');
    EXPECT_EQ(task_state_letter(kTaskUninterruptible, 0), 'D');
    EXPECT_EQ(task_state_letter(kTaskStopped, 0), 'T');
    EXPECT_EQ(task_state_letter(kTaskTraced, 0), 't');
    EXPECT_EQ(task_state_letter(0, kExitDead), 'X');
    EXPECT_EQ(task_state_letter(0, kExitZombie), 'Z');
    EXPECT_EQ(task_state_letter(kTaskParked, 0), 'P');
    EXPECT_EQ(task_state_letter(kTaskIdle, 0), 'I') << "TASK_IDLE reads as I, not D";
    EXPECT_EQ(task_state_letter(kTaskInterruptible | kTaskFrozen, 0), 'D') << "frozen reads as D";
    EXPECT_EQ(task_state_letter(kTaskRtlockWait, 0), 'D');
    EXPECT_EQ(task_state_letter(kTaskInterruptible | 0x100 /* TASK_WAKEKILL */, 0), 'S');
}

}  // namespace
}  // namespace hvpatch
