#include "broker/config.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <toml++/toml.h>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

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

// A list of non-negative integers (uids, gids, pids).
template <class T>
bool read_ids(std::string_view source, std::string_view key, const toml::node& node,
              std::vector<T>& out, std::string& diagnostic) {
  const auto* a = node.as_array();
  if (a == nullptr) {
    diagnostic = fmt::format("{}: 'policy.channel.{}' must be an array of integers",
                             where(source, node), key);
    return false;
  }
  for (const auto& e : *a) {
    const auto* v = e.as_integer();
    if (v == nullptr || v->get() < 0 || v->get() > 0x7fffffff) {
      diagnostic = fmt::format("{}: 'policy.channel.{}' must hold integers in [0, 2^31)",
                               where(source, e), key);
      return false;
    }
    out.push_back(static_cast<T>(v->get()));
  }
  return true;
}

bool read_channel_rule(std::string_view source, const toml::node& node, ChannelRule& rule,
                       std::string& diagnostic) {
  const auto* t = node.as_table();
  if (t == nullptr) {
    diagnostic = fmt::format("{}: each [[policy.channel]] must be a table", where(source, node));
    return false;
  }
  for (const auto& [k, v] : *t) {
    const std::string_view key = k.str();
    bool ok = true;
    if (key == "name") {
      const auto* s = v.as_string();
      const bool bad_star = s != nullptr && s->get().find('*') != std::string::npos &&
                            s->get().find('*') != s->get().size() - 1;
      if (s == nullptr || s->get().empty() || s->get().size() > 255 || bad_star) {
        diagnostic = fmt::format(
            "{}: 'policy.channel.name' must be a channel name, or a prefix ending in '*' "
            "(1 to 255 characters, '*' only last)",
            where(source, v));
        ok = false;
      } else {
        rule.name = s->get();
      }
    } else if (key == "allowed_uids") {
      ok = read_ids(source, key, v, rule.uids, diagnostic);
    } else if (key == "allowed_gids") {
      ok = read_ids(source, key, v, rule.gids, diagnostic);
    } else if (key == "allowed_pids") {
      ok = read_ids(source, key, v, rule.pids, diagnostic);
    } else if (key == "allowed_executables") {
      const auto* a = v.as_array();
      ok = a != nullptr;
      if (ok) {
        for (const auto& e : *a) {
          const auto* s = e.as_string();
          if (s == nullptr || s->get().empty() || s->get().front() != '/') {
            ok = false;
            break;
          }
          rule.executables.push_back(s->get());
        }
      }
      if (!ok) {
        diagnostic = fmt::format(
            "{}: 'policy.channel.allowed_executables' must be an array of absolute paths",
            where(source, v));
      }
    } else if (key == "requires") {
      const auto* a = v.as_array();
      ok = a != nullptr;
      if (ok) {
        for (const auto& e : *a) {
          const auto* s = e.as_string();
          ChannelRule::Requirement req;
          if (s == nullptr || !parse_requirement(s->get(), req)) {
            ok = false;
            break;
          }
          rule.requires_caps.push_back(std::move(req));
        }
      }
      if (!ok) {
        diagnostic = fmt::format(
            "{}: 'policy.channel.requires' must be an array of \"object:right+right\" "
            "(rights: send, receive, share, grant, map, read, write)",
            where(source, v));
      }
    } else if (key == "audit") {
      const auto* b = v.as_boolean();
      if (b == nullptr) {
        diagnostic =
            fmt::format("{}: 'policy.channel.audit' must be true or false", where(source, v));
        ok = false;
      } else {
        rule.audit_messages = b->get();
      }
    } else {
      diagnostic = fmt::format(
          "{}: unknown key '{}' in [[policy.channel]] (known: name, allowed_uids, "
          "allowed_gids, allowed_pids, allowed_executables, requires, audit)",
          where(source, v), key);
      ok = false;
    }
    if (!ok) return false;
  }
  if (rule.name.empty()) {
    diagnostic = fmt::format("{}: [[policy.channel]] needs a 'name'", where(source, node));
    return false;
  }
  return true;
}

// [policy]: control-operation rates and [[policy.channel]] rules (docs/policy.md).
bool read_policy(std::string_view source, const toml::table& t, Policy& p,
                 std::string& diagnostic) {
  for (const auto& [k, node] : t) {
    const std::string_view key = k.str();
    bool ok = false;
    if (key == "creates_per_second") {
      ok = read_u32(source, "policy", key, node, p.creates_per_second, 0, 1u << 24, diagnostic);
    } else if (key == "create_burst") {
      ok = read_u32(source, "policy", key, node, p.create_burst, 0, 1u << 24, diagnostic);
    } else if (key == "channel") {
      const auto* a = node.as_array();
      if (a == nullptr) {
        diagnostic = fmt::format("{}: 'policy.channel' must be an array of tables ([[...]])",
                                 where(source, node));
      } else {
        ok = true;
        for (const auto& e : *a) {
          ChannelRule rule;
          if (!read_channel_rule(source, e, rule, diagnostic)) return false;
          for (const ChannelRule& other : p.channels) {
            if (other.name == rule.name) {
              diagnostic = fmt::format("{}: a second [[policy.channel]] for '{}'", where(source, e),
                                       rule.name);
              return false;
            }
          }
          p.channels.push_back(std::move(rule));
        }
      }
    } else {
      diagnostic = fmt::format(
          "{}: unknown key '{}' in [policy] (known: creates_per_second, create_burst, "
          "[[policy.channel]])",
          where(source, node), key);
    }
    if (!ok) return false;
  }
  return true;
}

// [audit]: the audit trail (docs/policy.md).
bool read_audit(std::string_view source, const toml::table& t, AuditOptions& a,
                std::string& diagnostic) {
  for (const auto& [k, node] : t) {
    const std::string_view key = k.str();
    bool ok = false;
    if (key == "path") {
      const auto* s = node.as_string();
      if (s == nullptr || s->get().empty() || s->get().front() != '/') {
        diagnostic = fmt::format("{}: 'audit.path' must be an absolute path", where(source, node));
      } else {
        a.path = s->get();
        ok = true;
      }
    } else if (key == "max_kib") {
      std::uint32_t kib = 0;
      ok = read_u32(source, "audit", key, node, kib, 1, 1u << 22, diagnostic);
      a.max_bytes = static_cast<std::uint64_t>(kib) << 10;
    } else if (key == "keep") {
      ok = read_u32(source, "audit", key, node, a.keep, 0, 1000, diagnostic);
    } else if (key == "buffer") {
      ok = read_u32(source, "audit", key, node, a.buffer, 1, 1u << 20, diagnostic);
    } else if (key == "control") {
      const auto* b = node.as_boolean();
      if (b == nullptr) {
        diagnostic = fmt::format("{}: 'audit.control' must be true or false", where(source, node));
      } else {
        a.control = b->get();
        ok = true;
      }
    } else {
      diagnostic = fmt::format(
          "{}: unknown key '{}' in [audit] (known: path, max_kib, keep, buffer, control)",
          where(source, node), key);
    }
    if (!ok) return false;
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
    } else if (key == "policy" || key == "audit") {
      const auto* t = node.as_table();
      if (t == nullptr) {
        diagnostic = fmt::format("{}: '{}' must be a table", where(source, node), key);
        return invalid;
      }
      const bool ok = key == "policy" ? read_policy(source, *t, cfg.broker.policy, diagnostic)
                                      : read_audit(source, *t, cfg.broker.audit, diagnostic);
      if (!ok) return invalid;
    } else {
      diagnostic = fmt::format(
          "{}: unknown key '{}' (known: socket, log_level, [limits], [rate_limit], [mq], "
          "[policy], [audit])",
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
  auto cfg = parse_config(ss.str(), path, diagnostic);
  if (cfg) cfg->broker.config_path = path;
  return cfg;
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
