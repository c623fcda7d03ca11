#include "support/proc_oracles.h"

#include <chrono>
#include <cstdlib>
#include <sstream>

namespace hvpatch::test {

using namespace std::chrono_literals;

// "TID STATE NAME" per task from /proc/*/task/*/stat (name from /proc comm).
std::map<int, std::pair<char, std::string>> guest_tasks(GuestShell& guest) {
    std::string out = guest.run_ok(
        "for t in /proc/[0-9]*/task/*; do s=$(cat $t/stat 2>/dev/null) || continue; "
        "c=$(cat $t/comm 2>/dev/null) || continue; s=${s##*) }; echo \"${t##*/} ${s%% *} $c\"; done");
    std::map<int, std::pair<char, std::string>> tasks;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream f(line);
        int tid = 0;
        std::string state, name;
        if (!(f >> tid >> state) || state.size() != 1 || !std::getline(f >> std::ws, name)) continue;
        tasks[tid] = {state[0], name};
    }
    return tasks;
}

// /proc/TID/stack of every task, frames as "func+0x1a/0x40 [mod]".
std::map<int, std::vector<std::string>> guest_stacks(GuestShell& guest) {
    std::string out = guest.run_ok(
        // A task that exits mid-listing makes its cat fail: not an error.
        "for t in /proc/[0-9]*/task/*; do echo \"== ${t##*/}\"; cat $t/stack 2>/dev/null || true; done", 60s);
    std::map<int, std::vector<std::string>> stacks;
    std::istringstream in(out);
    std::string line;
    int tid = -1;
    while (std::getline(in, line)) {
        if (line.rfind("== ", 0) == 0) {
            tid = std::atoi(line.c_str() + 3);
            stacks[tid];
        } else if (tid >= 0 && line.rfind("[<0>] ", 0) == 0) {
            stacks[tid].push_back(line.substr(6));
        }
    }
    return stacks;
}

}  // namespace hvpatch::test
