// cli/child_processes.h: how `hvpatch fleet` runs its children, with
// /bin/sh scripts standing in for `hvpatch apply`: at most N at once,
// output and progress lines kept apart, exit status and signals reported,
// SIGINT passed on and no new child started after it.
#include "cli/child_processes.h"

#include <gtest/gtest.h>

#include <csignal>
#include <map>

#include "hvpatch/error.h"
#include "vmm/interrupt.h"

namespace hvpatch::cli {
namespace {

using namespace std::chrono_literals;

std::vector<std::string> sh(const std::string& script) { return {"/bin/sh", "-c", script}; }

TEST(ChildProcesses, OutputErrorsProgressAndStatusArePerChild) {
    std::map<std::size_t, std::vector<std::string>> progress;
    std::vector<std::size_t> finished;
    ChildCallbacks cb;
    cb.progress_line = [&](std::size_t i, std::string_view line) { progress[i].emplace_back(line); };
    cb.finished = [&](std::size_t i, const ChildExit&) { finished.push_back(i); };
    auto r = run_children({sh("echo one >&3; echo report; echo oops >&2; printf 'two' >&3; exit 4"),
                           sh("echo other >&3; kill -KILL $$"), {"/nonexistent/hvpatch"}},
                          3, cb);
    ASSERT_EQ(r.children.size(), 3u);
    EXPECT_FALSE(r.interrupted);
    EXPECT_TRUE(r.children[0].started);
    EXPECT_EQ(r.children[0].exit_code, 4);
    EXPECT_EQ(r.children[0].out, "report\n");
    EXPECT_EQ(r.children[0].err, "oops\n");
    // A last line without its '\n' still arrives.
    EXPECT_EQ(progress[0], (std::vector<std::string>{"one", "two"}));
    EXPECT_EQ(progress[1], (std::vector<std::string>{"other"}));
    EXPECT_EQ(r.children[1].signal, SIGKILL);
    EXPECT_EQ(r.children[1].exit_code, -1);
    EXPECT_EQ(r.children[2].exit_code, 127);
    EXPECT_NE(r.children[2].err.find("cannot execute"), std::string::npos) << r.children[2].err;
    EXPECT_EQ(finished.size(), 3u);
}

TEST(ChildProcesses, AtMostParallelAtOnceAndAllRun) {
    int now = 0, most = 0;
    ChildCallbacks cb;
    cb.started = [&](std::size_t) { most = std::max(most, ++now); };
    cb.finished = [&](std::size_t, const ChildExit&) { --now; };
    std::vector<std::vector<std::string>> commands(5, sh("sleep 0.2; exit 0"));
    const auto t0 = std::chrono::steady_clock::now();
    auto r = run_children(commands, 2, cb);
    const auto wall = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(most, 2);
    for (const auto& c : r.children) EXPECT_EQ(c.exit_code, 0);
    // Three rounds of 0.2 s, not one.
    EXPECT_GE(wall, 550ms);
}

TEST(ChildProcesses, ChildrenDoNotShareTheParentsProcessGroup) {
    auto r = run_children({sh("ps -o pgid= -p $$")}, 1, {});
    ASSERT_EQ(r.children[0].exit_code, 0) << r.children[0].err;
    EXPECT_NE(std::stol(r.children[0].out), static_cast<long>(getpgrp()));
}

TEST(ChildProcesses, InterruptIsPassedOnAndStopsNewStarts) {
    install_interrupt_handlers();
    clear_interrupt();
    int interrupted_running = -1;
    ChildCallbacks cb;
    // The child says "ready" once its trap is set; the interrupt comes then.
    cb.progress_line = [&](std::size_t, std::string_view line) {
        if (line == "ready") std::raise(SIGINT);
    };
    cb.interrupted = [&](int sig, std::size_t running) {
        EXPECT_EQ(sig, SIGINT);
        interrupted_running = static_cast<int>(running);
    };
    auto r = run_children({sh("trap 'kill $!; echo rolled back; exit 130' INT; echo ready >&3; sleep 20 & wait"),
                           sh("exit 0")},
                          1, cb);
    clear_interrupt();
    EXPECT_TRUE(r.interrupted);
    EXPECT_EQ(interrupted_running, 1);
    EXPECT_EQ(r.children[0].exit_code, 130);
    EXPECT_EQ(r.children[0].out, "rolled back\n");
    EXPECT_FALSE(r.children[1].started);
}

TEST(ChildProcesses, ParallelBelowOneIsAUsageError) {
    EXPECT_THROW(run_children({sh("true")}, 0, {}), Error);
}

}  // namespace
}  // namespace hvpatch::cli
