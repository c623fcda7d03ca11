// hvpatch's record of a VM as one XML element, for a VMM that keeps it with
// the VM's definition (libvirt: the domain's <metadata>, so that
// `virsh dumpxml` shows what is applied and a fresh host reads it back).
//
//   <state format="1" boot-id="..." kernel-release="6.1.0-28-amd64" updated="2026-11-27T09:10:11Z">
//     <patch name="livepatch_cmdline" sha256="..." phase="applied"
//            applied-at="..." updated-at="..." memory="0xffffffffc0400000+0x3000">
//       <function name="cmdline_proc_show" object="vmlinux" address="0xffffffff81399d60"
//                 new-function="livepatch_cmdline_proc_show" new-address="0xffffffffc0400030"/>
//     </patch>
//     <record encoding="json">{ the whole VmState, as in the state file }</record>
//   </state>
//
// The attributes are a summary for people. The <record> child is what
// hvpatch acts on (revert needs every byte and address); reading checks
// that the summary agrees with it, so a hand edit of one but not the other
// is reported instead of acted on.
//
// The element is written without a namespace: libvirt's
// virDomainSetMetadata takes it so and puts it, children included, into
// the namespace it is given (kVmRecordNamespace, prefix kVmRecordPrefix);
// virDomainGetMetadata gives it back without one. Reading accepts either
// form, and no other namespace.
#pragma once

#include <cstddef>
#include <string>

#include "patch/applied_state.h"

namespace hvpatch {

// Bound on the element text hvpatch reads back or writes (a record of a
// few patches is a few KiB).
inline constexpr std::size_t kMaxVmStateXmlBytes = std::size_t{4} << 20;

// The element for `state`, on one line (libvirt indents it in dumpxml). Throws Error(Internal) if it would
// exceed kMaxVmStateXmlBytes.
std::string vm_state_to_xml(const VmState& state);

// Parses an element written by vm_state_to_xml (or given back by the VMM).
// `where` names the place for messages ("<metadata> of domain web-01 ...").
// Throws Error(Internal) naming `where` for anything malformed: too large,
// not XML, a DOCTYPE, another root or namespace, no or several <record>,
// a record that is not a valid state, a summary that disagrees with it.
VmState vm_state_from_xml(const std::string& xml, const std::string& where);

}  // namespace hvpatch
