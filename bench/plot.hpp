// `vipc bench peers --plot FILE`: the comparison drawn by gnuplot (PNG or SVG, chosen by
// the file's extension): round-trip percentiles per system on a log scale (busy,
// blocking, large messages; the p50 bar's whiskers span the rounds' p50s) and
// throughput (whiskers: the rounds' rates).
#pragma once

#include <string>

#include "report.hpp"

namespace vipc::bench {

// The terminal for `file` ("pngcairo" or "svg"), or empty when the extension is neither.
std::string plot_terminal(const std::string& file);

// Writes the data and script into a private directory, runs gnuplot on them and removes
// the directory. Entries are grouped by their "test" and "mode" labels; skipped entries
// are left out of the picture (the table and JSON list them). Throws BenchError when
// gnuplot is missing or fails.
void plot_report(const Report& report, const std::string& file);

}  // namespace vipc::bench
