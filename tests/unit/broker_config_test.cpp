// vipcd's TOML configuration: documented keys are read, anything else is a clear error.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "broker/config.hpp"

namespace vipc::broker {
namespace {

TEST(BrokerConfigTest, ReadsEveryDocumentedKey) {
  std::string why;
  auto c = parse_config(R"(
socket = "/run/test/vipcd.sock"
log_level = "debug"
[limits]
max_clients = 10
max_capabilities_per_client = 20
max_objects_per_client = 30
max_pending_grants_per_client = 40
grant_timeout_ms = 500
[rate_limit]
failed_redemption_burst = 5
failed_redemptions_per_second = 6
)",
                        "test.toml", why);
  ASSERT_TRUE(c.ok()) << why;
  EXPECT_EQ(c->socket.value_or(""), "/run/test/vipcd.sock");
  EXPECT_EQ(c->broker.log_level, LogLevel::Debug);
  EXPECT_EQ(c->broker.max_clients, 10u);
  EXPECT_EQ(c->broker.max_capabilities_per_client, 20u);
  EXPECT_EQ(c->broker.max_objects_per_client, 30u);
  EXPECT_EQ(c->broker.max_pending_grants_per_client, 40u);
  EXPECT_EQ(c->broker.grant_timeout_ms, 500u);
  EXPECT_EQ(c->broker.failed_redemption_burst, 5u);
  EXPECT_EQ(c->broker.failed_redemptions_per_second, 6u);
}

TEST(BrokerConfigTest, EmptyFileGivesDefaults) {
  std::string why;
  auto c = parse_config("", "empty.toml", why);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->socket.has_value());
  EXPECT_EQ(c->broker.max_clients, BrokerOptions{}.max_clients);
}

TEST(BrokerConfigTest, UnknownKeysAreErrorsNamingFileLineAndKey) {
  std::string why;
  EXPECT_FALSE(parse_config("sockett = \"x\"\n", "a.toml", why).ok());
  EXPECT_NE(why.find("a.toml:1:1"), std::string::npos) << why;
  EXPECT_NE(why.find("unknown key 'sockett'"), std::string::npos) << why;
  why.clear();
  EXPECT_FALSE(parse_config("[limits]\nmax_client = 3\n", "b.toml", why).ok());
  EXPECT_NE(why.find("b.toml:2"), std::string::npos) << why;
  EXPECT_NE(why.find("'max_client' in [limits]"), std::string::npos) << why;
  why.clear();
  EXPECT_FALSE(parse_config("[other]\n", "c.toml", why).ok());
  EXPECT_NE(why.find("unknown key 'other'"), std::string::npos) << why;
}

TEST(BrokerConfigTest, WrongTypesRangesAndSyntaxAreErrors) {
  std::string why;
  EXPECT_FALSE(parse_config("[limits]\nmax_clients = \"many\"\n", "t", why).ok());
  EXPECT_NE(why.find("must be an integer"), std::string::npos) << why;
  EXPECT_FALSE(parse_config("[limits]\nmax_clients = 0\n", "t", why).ok());
  EXPECT_NE(why.find("out of range"), std::string::npos) << why;
  EXPECT_FALSE(parse_config("log_level = \"loud\"\n", "t", why).ok());
  EXPECT_FALSE(parse_config("limits = 3\n", "t", why).ok());
  EXPECT_FALSE(parse_config("socket = [\n", "t", why).ok());
  EXPECT_NE(why.find("t:"), std::string::npos) << why;
}

TEST(BrokerConfigTest, RuntimeDirFollowsTheEnvironment) {
  const char* saved = std::getenv("VIPC_RUNTIME_DIR");
  const std::string keep = saved != nullptr ? saved : "";
  ::setenv("VIPC_RUNTIME_DIR", "/x/y", 1);
  EXPECT_EQ(default_socket_path(), "/x/y/vipcd.sock");
  ::unsetenv("VIPC_RUNTIME_DIR");
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] == '/') {
    EXPECT_EQ(default_socket_path(), std::string(xdg) + "/vipc/vipcd.sock");
  } else {
    EXPECT_NE(default_socket_path().find("/vipcd.sock"), std::string::npos);
  }
  if (saved != nullptr) ::setenv("VIPC_RUNTIME_DIR", keep.c_str(), 1);
}

TEST(BrokerConfigTest, ExplicitConfigFileMustExist) {
  auto r = find_config_file("/nonexistent/vipcd.toml");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::NotFound);
}

}  // namespace
}  // namespace vipc::broker
