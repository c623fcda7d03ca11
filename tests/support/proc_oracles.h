// The guest's own view of its tasks, from its /proc, read over the command
// channel: the oracles that `hvpatch ps` and `hvpatch stack` are checked
// against (tests/integration/test_introspection_oracles.cpp and the libvirt
// target tests). A listing takes a few hundred ms; take one just before and
// one just after hvpatch's freeze and compare what is equal in both.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "support/guest_shell.h"

namespace hvpatch::test {

// TID -> (state letter, comm) of every task, from /proc/*/task/*/stat and comm.
std::map<int, std::pair<char, std::string>> guest_tasks(GuestShell& guest);

// TID -> /proc/TID/stack frames ("func+0x1a/0x40 [mod]") of every task.
std::map<int, std::vector<std::string>> guest_stacks(GuestShell& guest);

}  // namespace hvpatch::test
