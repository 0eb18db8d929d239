// Shared by the observe subcommands: connecting to the broker and reading its views.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "observe.hpp"
#include "vipc/runtime.hpp"

namespace vipc::tools {

// A connection to the broker for the views (never starts a daemon). Prints why on
// failure.
std::optional<Runtime> connect_for_views(const ObserveOptions& o);
// Asks the broker to refresh the views, then reads `<runtime dir>/<file>` as JSON.
// Prints why on failure.
std::optional<nlohmann::json> fetch_view(Runtime& rt, const char* file);
// The runtime directory's path of a view file.
std::string view_path(const Runtime& rt, const char* file);

}  // namespace vipc::tools
