// The guest kernels hvpatch patches: Linux 5.10 to 7.x. Inside that range
// every format difference is detected from guest memory (see
// docs/operator-guide.md, "Supported guest kernels"); outside it hvpatch
// has no evidence that its model of the livepatch core, the module loader
// and the task-switching points still holds, so apply refuses before it
// changes anything (reading verbs still work: they check every format).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace hvpatch {

// nullopt when `release` (uname -r, e.g. "6.12.95+deb12-amd64",
// "5.14.0-284.11.1.el9_2.x86_64") is in the supported range, else why not.
std::optional<std::string> unsupported_kernel_reason(std::string_view release);

}  // namespace hvpatch
