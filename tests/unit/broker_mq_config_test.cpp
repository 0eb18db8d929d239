// vipcd's [mq] configuration: POSIX message-queue limits.
#include <gtest/gtest.h>

#include <string>

#include "broker/config.hpp"

namespace vipc::broker {
namespace {

TEST(BrokerMqConfig, ReadsEveryMqKey) {
  std::string why;
  auto c = parse_config(R"(
[mq]
max_queues = 8
max_messages = 100
max_message_size = 4096
max_queue_mib = 2
default_max_messages = 5
default_message_size = 128
)",
                        "mq.toml", why);
  ASSERT_TRUE(c.ok()) << why;
  const MqLimits& m = c->broker.mq;
  EXPECT_EQ(m.max_queues, 8u);
  EXPECT_EQ(m.max_messages, 100u);
  EXPECT_EQ(m.max_message_size, 4096u);
  EXPECT_EQ(m.max_queue_bytes, 2ull << 20);
  EXPECT_EQ(m.default_max_messages, 5u);
  EXPECT_EQ(m.default_message_size, 128u);
}

TEST(BrokerMqConfig, UnknownKeysRangesAndDefaultsAboveMaximaAreErrors) {
  std::string why;
  EXPECT_FALSE(parse_config("[mq]\nmax_queus = 1\n", "a.toml", why).ok());
  EXPECT_NE(why.find("max_queus"), std::string::npos);
  EXPECT_FALSE(parse_config("[mq]\nmax_messages = 0\n", "a.toml", why).ok());
  EXPECT_FALSE(parse_config("[mq]\nmax_messages = 4\n", "a.toml", why).ok());  // default 10
  EXPECT_NE(why.find("defaults"), std::string::npos);
  EXPECT_FALSE(parse_config("mq = 3\n", "a.toml", why).ok());
}

}  // namespace
}  // namespace vipc::broker
