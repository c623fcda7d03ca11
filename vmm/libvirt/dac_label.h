// The user QEMU runs as under libvirt: the DAC security label of the live
// domain definition, <seclabel model='dac'><label>+UID:+GID</label>.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>

namespace hvpatch {

// uid:gid of the domain's DAC label in `domain_xml` (numbers "+107:+114" or
// user:group names), or nullopt when it has none (DAC off, or static
// without a label). Error(Protocol) for XML that is not a domain or a
// label that names no known user/group; `who` names the domain in messages.
std::optional<std::pair<uid_t, gid_t>> dac_label_owner(const std::string& domain_xml, const std::string& who);

}  // namespace hvpatch
