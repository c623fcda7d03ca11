// `hvpatch demo`, the README's main job, end to end: it boots the bundled
// test guest with plain RAM (as a VM is configured by default), shows
// /proc/cmdline from inside it, applies the sample patch from the host,
// shows it again, reverts, shows it once more. Checked from its --json
// report (the guest's own output at each step) and its audit records.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

TEST(Demo, PatchesTheBundledGuestLiveAndRevertsIt) {
    const std::string guest_dir = test_guest_dir();
    char tmpl[] = "/tmp/hvpatch-demo-test.XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    // The sample built for the guest's kernel, as the demo would build it.
    const std::string ko = example_patch_ko(Example::Cmdline, guest_release(guest_dir));
    CommandResult r = run_command({hvpatch_binary(), "--audit-log", dir + "/audit.jsonl", "demo", "--guest-dir",
                                   guest_dir, "--patch", ko, "--json"},
                                  300s);
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_EQ(r.err.find("notice"), std::string::npos) << r.err;
    json doc = json::parse(r.out);
    EXPECT_EQ(doc["patched_output_differs"], true) << doc.dump(2);

    std::vector<std::string> outputs;
    for (const auto& step : doc["steps"])
        if (step.contains("guest_command")) outputs.push_back(step["output"].get<std::string>());
    ASSERT_EQ(outputs.size(), 3u) << doc.dump(2);
    EXPECT_NE(outputs[0], kCmdlinePatchedOutput);
    EXPECT_NE(outputs[0].find("console=ttyS0"), std::string::npos) << outputs[0];
    EXPECT_EQ(outputs[1], kCmdlinePatchedOutput);
    EXPECT_EQ(outputs[2], outputs[0]);

    auto records = read_audit_log(dir + "/audit.jsonl");
    ASSERT_EQ(records.size(), 2u);
    EXPECT_EQ(records[0]["operation"], "apply");
    EXPECT_EQ(records[0]["outcome"], "applied");
    EXPECT_EQ(records[1]["operation"], "revert");
    EXPECT_EQ(records[1]["outcome"], "reverted");
    for (const auto& rec : records) EXPECT_EQ(rec["memory_path"], "process-memory") << rec.dump();
    EXPECT_TRUE(verify_audit_log(dir + "/audit.jsonl").ok);
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hvpatch::test
