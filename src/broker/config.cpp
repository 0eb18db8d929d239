#include "broker/config.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <toml++/toml.h>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "broker/platform.hpp"

namespace vipc::broker {
namespace {

std::string where(std::string_view source, const toml::node& node) {
  const auto& s = node.source();
  return fmt::format("{}:{}:{}", source, s.begin.line, s.begin.column);
}

// Reads an integer key into `out` if it is in [min, max].
bool read_u32(std::string_view source, std::string_view table, std::string_view key,
              const toml::node& node, std::uint32_t& out, std::uint32_t min, std::uint32_t max,
              std::string& diagnostic) {
  const auto* v = node.as_integer();
  if (v == nullptr) {
    diagnostic = fmt::format("{}: '{}.{}' must be an integer", where(source, node), table, key);
    return false;
  }
  const std::int64_t x = v->get();
  if (x < min || x > max) {
    diagnostic = fmt::format("{}: '{}.{}' = {} is out of range [{}, {}]", where(source, node),
                             table, key, x, min, max);
    return false;
  }
  out = static_cast<std::uint32_t>(x);
  return true;
}

bool read_limits(std::string_view source, const toml::table& t, BrokerOptions& o,
                 std::string& diagnostic) {
  for (const auto& [k, node] : t) {
    const std::string_view key = k.str();
    bool ok = false;
    if (key == "max_clients") {
      ok = read_u32(source, "limits", key, node, o.max_clients, 1, 1u << 20, diagnostic);
    } else if (key == "max_capabilities_per_client") {
      ok = read_u32(source, "limits", key, node, o.max_capabilities_per_client, 1, 1u << 24,
                    diagnostic);
    } else if (key == "max_objects_per_client") {
      ok = read_u32(source, "limits", key, node, o.max_objects_per_client, 1, 1u << 20, diagnostic);
    } else if (key == "max_pending_grants_per_client") {
      ok = read_u32(source, "limits", key, node, o.max_pending_grants_per_client, 1, 1u << 16,
                    diagnostic);
    } else if (key == "grant_timeout_ms") {
      ok = read_u32(source, "limits", key, node, o.grant_timeout_ms, 1, 86'400'000, diagnostic);
    } else {
      diagnostic = fmt::format(
          "{}: unknown key '{}' in [limits] (known: max_clients, max_capabilities_per_client, "
          "max_objects_per_client, max_pending_grants_per_client, grant_timeout_ms)",
          where(source, node), key);
    }
    if (!ok) return false;
  }
  return true;
}

bool read_rate_limit(std::string_view source, const toml::table& t, BrokerOptions& o,
                     std::string& diagnostic) {
  for (const auto& [k, node] : t) {
    const std::string_view key = k.str();
    bool ok = false;
    if (key == "failed_redemption_burst") {
      ok = read_u32(source, "rate_limit", key, node, o.failed_redemption_burst, 1, 1u << 20,
                    diagnostic);
    } else if (key == "failed_redemptions_per_second") {
      ok = read_u32(source, "rate_limit", key, node, o.failed_redemptions_per_second, 1, 1u << 20,
                    diagnostic);
    } else {
      diagnostic = fmt::format(
          "{}: unknown key '{}' in [rate_limit] (known: failed_redemption_burst, "
          "failed_redemptions_per_second)",
          where(source, node), key);
    }
    if (!ok) return false;
  }
  return true;
}

// [mq]: POSIX message-queue limits (docs/posix.md).
bool read_mq(std::string_view source, const toml::table& t, BrokerOptions& o,
             std::string& diagnostic) {
  MqLimits& m = o.mq;
  for (const auto& [k, node] : t) {
    const std::string_view key = k.str();
    bool ok = false;
    if (key == "max_queues") {
      ok = read_u32(source, "mq", key, node, m.max_queues, 1, 1u << 20, diagnostic);
    } else if (key == "max_messages") {
      ok = read_u32(source, "mq", key, node, m.max_messages, 1, 1u << 24, diagnostic);
    } else if (key == "max_message_size") {
      ok = read_u32(source, "mq", key, node, m.max_message_size, 1, 1u << 30, diagnostic);
    } else if (key == "max_queue_mib") {
      std::uint32_t mib = 0;
      ok = read_u32(source, "mq", key, node, mib, 1, 1u << 16, diagnostic);
      m.max_queue_bytes = static_cast<std::uint64_t>(mib) << 20;
    } else if (key == "default_max_messages") {
      ok = read_u32(source, "mq", key, node, m.default_max_messages, 1, 1u << 24, diagnostic);
    } else if (key == "default_message_size") {
      ok = read_u32(source, "mq", key, node, m.default_message_size, 1, 1u << 30, diagnostic);
    } else {
      diagnostic = fmt::format(
          "{}: unknown key '{}' in [mq] (known: max_queues, max_messages, max_message_size, "
          "max_queue_mib, default_max_messages, default_message_size)",
          where(source, node), key);
    }
    if (!ok) return false;
  }
  if (m.default_max_messages > m.max_messages || m.default_message_size > m.max_message_size) {
    diagnostic = fmt::format("{}: [mq] defaults exceed the maxima", source);
    return false;
  }
  return true;
}

bool file_exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

}  // namespace

Result<DaemonConfig> parse_config(std::string_view text, std::string_view source,
                                  std::string& diagnostic) {
  const Error invalid(ErrorCode::InvalidArgument, "vipcd configuration");
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    diagnostic = fmt::format("{}:{}:{}: {}", source, e.source().begin.line, e.source().begin.column,
                             e.description());
    return invalid;
  }
  DaemonConfig cfg;
  for (const auto& [k, node] : root) {
    const std::string_view key = k.str();
    if (key == "socket") {
      const auto* s = node.as_string();
      if (s == nullptr || s->get().empty()) {
        diagnostic = fmt::format("{}: 'socket' must be a non-empty string", where(source, node));
        return invalid;
      }
      cfg.socket = s->get();
    } else if (key == "log_level") {
      const auto* s = node.as_string();
      auto level = s != nullptr ? parse_log_level(s->get())
                                : Result<LogLevel>(Error(ErrorCode::InvalidArgument));
      if (!level) {
        diagnostic = fmt::format("{}: 'log_level' must be one of debug, info, warn, error, off",
                                 where(source, node));
        return invalid;
      }
      cfg.broker.log_level = *level;
    } else if (key == "limits" || key == "rate_limit") {
      const auto* t = node.as_table();
      if (t == nullptr) {
        diagnostic = fmt::format("{}: '{}' must be a table", where(source, node), key);
        return invalid;
      }
      const bool ok = key == "limits" ? read_limits(source, *t, cfg.broker, diagnostic)
                                      : read_rate_limit(source, *t, cfg.broker, diagnostic);
      if (!ok) return invalid;
    } else if (key == "mq") {
      const auto* t = node.as_table();
      if (t == nullptr) {
        diagnostic = fmt::format("{}: 'mq' must be a table", where(source, node));
        return invalid;
      }
      if (!read_mq(source, *t, cfg.broker, diagnostic)) return invalid;
    } else {
      diagnostic = fmt::format(
          "{}: unknown key '{}' (known: socket, log_level, [limits], [rate_limit], [mq])",
          where(source, node), key);
      return invalid;
    }
  }
  return cfg;
}

Result<DaemonConfig> load_config(const std::string& path, std::string& diagnostic) {
  std::ifstream in(path);
  if (!in) {
    diagnostic = fmt::format("{}: cannot be read", path);
    return Error(ErrorCode::NotFound, "vipcd configuration file");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path, diagnostic);
}

Result<std::string> find_config_file(const std::string& explicit_path) {
  if (!explicit_path.empty()) {
    if (!file_exists(explicit_path)) return Error(ErrorCode::NotFound, "--config file", ENOENT);
    return explicit_path;
  }
  if (const char* env = std::getenv("VIPC_CONFIG"); env != nullptr && env[0] != '\0') {
    if (!file_exists(env)) return Error(ErrorCode::NotFound, "$VIPC_CONFIG file", ENOENT);
    return std::string(env);
  }
  std::string user;
  if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg != nullptr && xdg[0] == '/') {
    user = std::string(xdg) + "/vipc/vipcd.toml";
  } else if (const char* home = std::getenv("HOME"); home != nullptr && home[0] == '/') {
    user = std::string(home) + "/.config/vipc/vipcd.toml";
  }
  if (!user.empty() && file_exists(user)) return user;
  if (file_exists("/etc/vipc/vipcd.toml")) return std::string("/etc/vipc/vipcd.toml");
  return std::string();
}

std::string default_runtime_dir() {
  if (const char* d = std::getenv("VIPC_RUNTIME_DIR"); d != nullptr && d[0] != '\0') {
    return d;
  }
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && x[0] == '/') {
    return std::string(x) + "/vipc";
  }
  const std::string uid = std::to_string(::geteuid());
  const std::string run_user = "/run/user/" + uid;
  if (::access(run_user.c_str(), W_OK) == 0) return run_user + "/vipc";
  return "/tmp/vipc-" + uid;
}

std::string default_socket_path() { return default_runtime_dir() + "/vipcd.sock"; }

}  // namespace vipc::broker
