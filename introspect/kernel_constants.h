// Values of the guest kernel that are preprocessor constants, so BTF does
// not carry them. Each names its source in linux 6.1; they have been stable
// across the kernels hvpatch supports (checked against 4.14..6.12 headers
// where noted), unlike structure offsets, which always come from BTF.
#pragma once

#include <cstdint>

namespace hvpatch::kconst {

// include/linux/sched.h: task states (task_struct.__state, exit_state).
inline constexpr std::uint32_t kTaskRunning = 0x0000;
inline constexpr std::uint32_t kTaskInterruptible = 0x0001;
inline constexpr std::uint32_t kTaskUninterruptible = 0x0002;
inline constexpr std::uint32_t kTaskStopped = 0x0004;
inline constexpr std::uint32_t kTaskTraced = 0x0008;
inline constexpr std::uint32_t kExitDead = 0x0010;
inline constexpr std::uint32_t kExitZombie = 0x0020;
inline constexpr std::uint32_t kTaskParked = 0x0040;
inline constexpr std::uint32_t kTaskNoload = 0x0400;
inline constexpr std::uint32_t kTaskRtlockWait = 0x1000;
inline constexpr std::uint32_t kTaskFrozen = 0x8000;  // 6.1 (TASK_FROZEN, 6.1+)
inline constexpr std::uint32_t kTaskReport = 0x7f;
inline constexpr std::uint32_t kTaskIdle = kTaskUninterruptible | kTaskNoload;
// fs/proc/array.c task_state_array: index = fls(reported state).
inline constexpr char kTaskStateLetters[] = "RSDTtXZPI";

// include/linux/sched.h: task_struct.flags.
inline constexpr std::uint32_t kPfIdle = 0x00000002;
inline constexpr std::uint32_t kPfExiting = 0x00000004;
inline constexpr std::uint32_t kPfWqWorker = 0x00000020;
inline constexpr std::uint32_t kPfKthread = 0x00200000;

// arch/x86/include/asm/thread_info.h: thread_info.flags bits.

// arch/x86/include/asm/page_64_types.h: THREAD_SIZE without KASAN
// (16 KiB; KASAN doubles it — Debian kernels do not enable KASAN).
inline constexpr std::uint64_t kThreadSize = 16 * 1024;

// include/linux/livepatch.h: task_struct.patch_state values.
inline constexpr int kKlpUndefined = -1;
inline constexpr int kKlpUnpatched = 0;
inline constexpr int kKlpPatched = 1;

}  // namespace hvpatch::kconst
