// SIGINT/SIGTERM handling. The handlers only set a flag; every blocking wait
// in vmm/ polls in short slices and throws Error(Interrupted) when the flag is
// set, so RAII guards unwind and put the VM back in the state it was found in.
#pragma once

#include <string>

namespace hvpatch {

// Installs the flag-setting handlers for SIGINT and SIGTERM (without
// SA_RESTART). Safe to call more than once.
void install_interrupt_handlers();
bool interrupt_requested();
// Signal number that interrupted us (0 if none).
int interrupt_signal();
// Throws Error(Interrupted) mentioning `what` if a signal arrived.
void throw_if_interrupted(const std::string& what);
// For tests: forget a previous interrupt.
void clear_interrupt();

// While one exists, throw_if_interrupted() does nothing: clean-up code
// (resuming the VM, detaching the stub) must run to the end even after a
// signal, bounded by its own timeouts.
class IgnoreInterrupts {
public:
    IgnoreInterrupts();
    ~IgnoreInterrupts();
    IgnoreInterrupts(const IgnoreInterrupts&) = delete;
    IgnoreInterrupts& operator=(const IgnoreInterrupts&) = delete;
};

}  // namespace hvpatch
