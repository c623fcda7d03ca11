// The record of one applied patch that the state unit tests share: the
// sample livepatch_cmdline with its one redirected function, every field
// filled with a plausible value. Tests change what they are about (phase,
// path, times) on the copy they get.
#pragma once

#include <string>

#include "patch/applied_state.h"

namespace hvpatch::test {

inline AppliedPatch sample_applied_patch() {
    AppliedPatch p;
    p.name = "livepatch_cmdline";
    p.sha256 = std::string(64, 'a');
    p.module_path = "/tmp/livepatch_cmdline.ko";
    p.phase = PatchPhase::Applied;
    p.base = 0xffffffffc0400000;
    p.size = 3 * 4096;
    p.text_size = p.rodata_size = p.data_size = 4096;
    p.text_protected = true;
    p.orc_ip_table = 0xffffffffc0401000;
    p.orc_table = 0xffffffffc0401020;
    p.orc_entries = 6;
    p.code = {{"livepatch_cmdline_proc_show", 0xffffffffc0400030, 0xffffffffc040004f}};
    RedirectedFunction f;
    f.object = "vmlinux";
    f.name = "cmdline_proc_show";
    f.new_symbol = "livepatch_cmdline_proc_show";
    f.entry = 0xffffffff81399d60;
    f.size = 0x30;
    f.site = 0xffffffff81399d64;
    f.new_address = 0xffffffffc0400030;
    f.new_size = 0x1f;
    f.trampoline = 0xffffffffc0400060;
    f.original = {0x0f, 0x1f, 0x44, 0x00, 0x00};
    f.to_trampoline = {0xe9, 0xf7, 0x62, 0x06, 0x3f};
    f.to_new = {0xe9, 0xc7, 0x62, 0x06, 0x3f};
    p.functions = {f};
    p.applied_at = p.updated_at = "2026-11-27T06:00:00Z";
    return p;
}

}  // namespace hvpatch::test
