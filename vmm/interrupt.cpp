#include "vmm/interrupt.h"

#include <csignal>
#include <cstring>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

volatile std::sig_atomic_t g_signal = 0;
thread_local int g_ignore_depth = 0;

void on_signal(int sig) { g_signal = sig; }

}  // namespace

void install_interrupt_handlers() {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a blocked poll() returns EINTR at once
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

bool interrupt_requested() { return g_signal != 0; }

int interrupt_signal() { return g_signal; }

void throw_if_interrupted(const std::string& what) {
    if (g_signal != 0 && g_ignore_depth == 0)
        throw Error(ErrorKind::Interrupted,
                    std::string("interrupted by ") + strsignal(g_signal) + " while " + what);
}

void clear_interrupt() { g_signal = 0; }

IgnoreInterrupts::IgnoreInterrupts() { ++g_ignore_depth; }
IgnoreInterrupts::~IgnoreInterrupts() { --g_ignore_depth; }

}  // namespace hvpatch
