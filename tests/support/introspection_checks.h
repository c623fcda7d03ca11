// The introspection oracles as checks on a booted test guest (gtest
// EXPECT/ASSERT inside): each compares one hvpatch view with the guest's own.
#pragma once

#include <string>
#include <vector>

#include "support/test_guest.h"

namespace hvpatch::test {

// `hvpatch sym --all` equals the guest's /proc/kallsyms byte for byte,
// module symbols included.
void expect_sym_all_equals_proc_kallsyms(TestGuest& guest);
// `hvpatch ps --json` equals /proc for every task unchanged across the freeze.
void expect_ps_equals_proc(TestGuest& guest);
// The same for any guest with a command channel; `target` is how hvpatch
// names it (e.g. {name, "-c", uri} for a libvirt domain).
void expect_ps_equals_proc(GuestShell& guest, const std::vector<std::string>& target);
// `hvpatch stack --all --json` equals /proc/PID/stack (minus the scheduler
// frames /proc omits) for every sleeping task unchanged across the freeze.
void expect_stacks_equal_proc_stack(TestGuest& guest);
// A task running on a frozen vCPU is unwound from that vCPU's registers.
void expect_running_tasks_start_at_vcpu_rip(TestGuest& guest);

}  // namespace hvpatch::test
