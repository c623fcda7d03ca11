// Figures as the benchmarks print them: medians and [min-max] of samples,
// three significant digits or so.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace hvpatch::bench {

inline double ms_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

inline std::string fmt(double v) {
    char buf[32];
    if (v < 10) std::snprintf(buf, sizeof buf, "%.3f", v);
    else if (v < 100) std::snprintf(buf, sizeof buf, "%.2f", v);
    else std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
}

inline double median_of(std::vector<double> s) {
    if (s.empty()) return 0;
    std::sort(s.begin(), s.end());
    std::size_t n = s.size();
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

// "median [min-max]", one value alone, "-" for none.
inline std::string median_and_range(const std::vector<double>& values) {
    if (values.empty()) return "-";
    auto [lo, hi] = std::minmax_element(values.begin(), values.end());
    if (*lo == *hi) return fmt(*lo);
    return fmt(median_of(values)) + " [" + fmt(*lo) + "-" + fmt(*hi) + "]";
}

}  // namespace hvpatch::bench
