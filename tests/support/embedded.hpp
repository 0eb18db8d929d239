// Shared pieces of the integration tests that run against an embedded broker: the
// fixture that starts one per test, and numbered messages that let a receiver check
// exactly-once, in-order delivery per source.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

#include "vipc/runtime.hpp"

namespace vipc::test {

// Starts an embedded broker (a thread of the test process, reached over its own
// socket) before each test; forked children reach it with rt->socket_path().
class EmbeddedBrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = Runtime::embedded();
    ASSERT_TRUE(r.ok()) << r.error().message();
    rt.emplace(std::move(*r));
  }
  std::optional<Runtime> rt;
};

// Message `seq` of source `source`.
struct Seq {
  std::uint32_t source = 0;
  std::uint64_t seq = 0;
};

inline SmallMessage seq_message(std::uint32_t source, std::uint64_t seq) {
  Seq s{source, seq};
  return SmallMessage(1, &s, sizeof s);
}

inline Seq seq_of(const SmallMessage& m) {
  Seq s;
  std::memcpy(&s, m.data.data(), sizeof s);
  return s;
}

}  // namespace vipc::test
