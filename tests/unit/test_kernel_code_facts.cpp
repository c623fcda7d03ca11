// thread_flag_bit_op on the instructions the TIF-bit derivation reads in
// klp_update_patch_state, klp_try_complete_transition and task_work_add,
// as Debian's 5.10, 6.1, 6.12 and 7.2 kernels encode them.
#include <gtest/gtest.h>

#include <vector>

#include "introspect/code_inspect.h"
#include "introspect/kernel_code_facts.h"

namespace hvpatch {
namespace {

Instruction one(std::vector<unsigned char> bytes) {
    auto code = decode(std::as_bytes(std::span(bytes)), 0xffffffff81000000ULL, 1);
    EXPECT_EQ(code.size(), 1u);
    return code.empty() ? Instruction{} : code.front();
}

TEST(ThreadFlagBitOp, LockedBtrAndBtsThroughABareRegister) {
    EXPECT_EQ(thread_flag_bit_op(one({0xf0, 0x48, 0x0f, 0xba, 0x37, 0x0d}), "btr"), 13u);  // lock btrq $0xd,(%rdi)
    EXPECT_EQ(thread_flag_bit_op(one({0xf0, 0x48, 0x0f, 0xba, 0x37, 0x09}), "btr"), 9u);   // 7.x
    EXPECT_EQ(thread_flag_bit_op(one({0xf0, 0x48, 0x0f, 0xba, 0x2b, 0x11}), "bts"), 17u);  // lock btsq $0x11,(%rbx)
    EXPECT_EQ(thread_flag_bit_op(one({0xf0, 0x48, 0x0f, 0xba, 0x2f, 0x13}), "bts"), 19u);  // 5.10's task_work_add
}

TEST(ThreadFlagBitOp, UnlockedOnAOneCpuGuest) {
    // alternatives_smp_unlock turned LOCK (f0) into DS (3e).
    EXPECT_EQ(thread_flag_bit_op(one({0x3e, 0x48, 0x0f, 0xba, 0x37, 0x0d}), "btr"), 13u);
    EXPECT_EQ(thread_flag_bit_op(one({0x3e, 0x48, 0x0f, 0xba, 0x2b, 0x11}), "bts"), 17u);
}

TEST(ThreadFlagBitOp, AnythingElseIsNotAThreadFlag) {
    EXPECT_FALSE(thread_flag_bit_op(one({0xf0, 0x48, 0x0f, 0xba, 0x37, 0x0d}), "bts"));  // the other operation
    // lock btsq $0x5,0x8(%rdi): not task->thread_info.flags at offset 0.
    EXPECT_FALSE(thread_flag_bit_op(one({0xf0, 0x48, 0x0f, 0xba, 0x6f, 0x08, 0x05}), "bts"));
    // lock orb $0x20,0x1(%rax): sets bit 13 byte-wise; not read as a bit number.
    EXPECT_FALSE(thread_flag_bit_op(one({0xf0, 0x80, 0x48, 0x01, 0x20}), "bts"));
    // bt (test only) and a register operand.
    EXPECT_FALSE(thread_flag_bit_op(one({0x48, 0x0f, 0xba, 0x27, 0x0d}), "btr"));
    EXPECT_FALSE(thread_flag_bit_op(one({0x48, 0x0f, 0xba, 0xf0, 0x0d}), "btr"));  // btr $0xd,%rax
}

}  // namespace
}  // namespace hvpatch
