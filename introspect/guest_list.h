// Walking the guest's circular list_heads (struct list_head: next, prev),
// shared by every walker of a kernel list (tasks, modules).
//
// Guest lists are untrusted: a walk is bounded, detects cycles that do not
// pass through the head, and reports the first unreadable node by address.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "introspect/virtual_memory.h"

namespace hvpatch {

// Walks the circular list whose head (a list_head that is not an entry
// itself, e.g. &init_task.tasks or &modules) is at `head`, following
// `next` (the list_head's first word), and returns the entry addresses
// (node address - `node_offset`) in list order. Throws Error(Guest),
// prefixed with `what`, when a node is unreadable ("list node at X
// unreadable: ..."), when the list comes back to an entry other than the
// head ("list loops back to X without reaching its head"), or when it has
// more than `limit` entries.
std::vector<std::uint64_t> walk_list(VirtualMemory& memory, std::uint64_t head, std::uint64_t node_offset,
                                     std::size_t limit, const std::string& what);
// The same, with `what` built only when the walk fails (for walks done once
// per task, where the message would cost more than the walk).
std::vector<std::uint64_t> walk_list(VirtualMemory& memory, std::uint64_t head, std::uint64_t node_offset,
                                     std::size_t limit, const std::function<std::string()>& what);

}  // namespace hvpatch
