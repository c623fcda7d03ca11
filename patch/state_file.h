// hvpatch's small JSON state files (what is applied where, per VM), written
// so that a crash or power loss at any moment leaves either the old or the
// new content, never a mix.
//
// write_json_atomically: write a temporary file in the same directory,
// fsync it, rename() it over the target (atomic within one file system),
// then fsync the directory so the rename itself is durable. The file is
// mode 0600: state files name VMs and patches, which only the operator
// should see.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace hvpatch {

// Replaces `path` with `value` (pretty-printed, 2-space indent, one
// trailing newline). Strings that are not valid UTF-8 are stored with
// U+FFFD in place of the bad bytes. The directory must exist. Throws
// Error(Internal) naming the file and the failing step; the temporary
// file is removed on failure.
void write_json_atomically(const std::string& path, const nlohmann::json& value);

// The content of `path`; nullopt if the file does not exist. Throws
// Error(Internal) "PATH: corrupt JSON state file: <parse error>" when it
// is not valid JSON, and naming the file for other read errors.
std::optional<nlohmann::json> read_json_file(const std::string& path);

}  // namespace hvpatch
