// The command line every benchmark takes: `[--reps N]`.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace hvpatch::bench {

// The repetition count from `--reps N` (1..1000), `fallback` without it;
// nullopt (after printing the usage line) for anything else.
inline std::optional<int> parse_reps(int argc, char** argv, int fallback, const char* program) {
    int reps = fallback;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            char* end = nullptr;
            long v = std::strtol(argv[++i], &end, 10);
            if (*end == '\0' && v >= 1 && v <= 1000) {
                reps = static_cast<int>(v);
                continue;
            }
        }
        std::fprintf(stderr, "usage: %s [--reps N]   (N >= 1, default %d)\n", program, fallback);
        return std::nullopt;
    }
    return reps;
}

}  // namespace hvpatch::bench
