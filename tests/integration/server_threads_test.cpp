// Several threads receiving on one Endpoint (ChannelOptions::receiver_threads): calls
// from many caller processes served by a pool of server threads, every answer right and
// the work really shared; one-way messages taken by several threads exactly once.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/embedded.hpp"
#include "support/process.hpp"
#include "support/sanitizers.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;

constexpr auto kAlarm = std::chrono::seconds(240);

struct Tag {
  std::uint32_t who = 0;
  std::uint32_t pad = 0;
  std::uint64_t n = 0;
};

using ServerThreads = test::EmbeddedBrokerTest;

TEST_F(ServerThreads, APoolOfThreadsServesManyCallers) {
  constexpr int kThreads = 4;
  constexpr int kCallers = 6;
  const std::uint64_t calls = test::kSanitized ? 60 : 300;
  ChannelOptions o;
  o.type = Synchronous{.capacity = 8};
  o.receiver_threads = kThreads;
  auto ep = Endpoint::create(*rt, "pool", o);
  ASSERT_TRUE(ep.ok()) << ep.error().message();

  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> served{0};
  std::vector<std::uint64_t> per_thread(kThreads, 0);
  std::atomic<int> errors{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      while (!stop.load()) {
        auto req = ep->receive_request(50ms);
        if (!req) {
          if (req.error().code() != ErrorCode::Timeout) ++errors;
          continue;
        }
        Tag tag;
        std::memcpy(&tag, req->message().data.data(), sizeof tag);
        std::this_thread::sleep_for(200us);  // the work: other threads take the next ones
        tag.n += 1;
        if (!req->reply(SmallMessage(2, &tag, sizeof tag))) ++errors;
        ++per_thread[static_cast<std::size_t>(t)];
        ++served;
      }
    });
  }
  const std::string path = rt->socket_path();
  std::vector<Child> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.push_back(Child::spawn(
        [&, c]() -> int {
          auto crt = Runtime::connect_to(path);
          if (!crt) return 10;
          auto ch = Channel::connect(*crt, "pool");
          if (!ch) return 11;
          for (std::uint64_t i = 0; i < calls; ++i) {
            Tag tag{static_cast<std::uint32_t>(c), 0, i * 10};
            auto r = ch->call(SmallMessage(1, &tag, sizeof tag), 20s);
            if (!r) return 12;
            Tag back;
            std::memcpy(&back, r->data.data(), sizeof back);
            if (back.who != static_cast<std::uint32_t>(c) || back.n != i * 10 + 1) return 13;
          }
          return 0;
        },
        kAlarm));
  }
  for (auto& c : callers) EXPECT_EQ(c.wait(200s), "exit 0");
  stop = true;
  for (auto& t : pool) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(served.load(), calls * kCallers);
  int busy = 0;
  for (std::uint64_t n : per_thread) busy += n > 0 ? 1 : 0;
  EXPECT_GE(busy, 2) << "one thread did all the work";
}

TEST_F(ServerThreads, SeveralThreadsTakeEveryMessageExactlyOnce) {
  constexpr int kThreads = 3;
  constexpr int kSenders = 4;
  const std::uint64_t per_sender = test::kSanitized ? 5'000 : 50'000;
  ChannelOptions o;
  o.type = Asynchronous{.buffer_size = 256};
  o.receiver_threads = kThreads;
  auto ep = Endpoint::create(*rt, "shared-inbox", o);
  ASSERT_TRUE(ep.ok());
  const std::string path = rt->socket_path();
  std::vector<Child> senders;
  for (int s = 0; s < kSenders; ++s) {
    senders.push_back(Child::spawn(
        [&, s]() -> int {
          auto crt = Runtime::connect_to(path);
          if (!crt) return 10;
          auto ch = Channel::connect(*crt, "shared-inbox");
          if (!ch) return 11;
          for (std::uint64_t i = 0; i < per_sender; ++i) {
            Tag tag{static_cast<std::uint32_t>(s), 0, i};
            if (!ch->send(SmallMessage(1, &tag, sizeof tag), 20s)) return 12;
          }
          return 0;
        },
        kAlarm));
  }
  const std::uint64_t total = per_sender * kSenders;
  std::atomic<std::uint64_t> taken{0};
  std::mutex mu;
  std::map<std::uint32_t, std::set<std::uint64_t>> seen;
  std::atomic<std::uint64_t> duplicates{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      SmallMessage m;
      std::vector<SmallMessage> batch(8);
      const auto give_up = std::chrono::steady_clock::now() + 120s;
      while (taken.load() < total && std::chrono::steady_clock::now() < give_up) {
        std::vector<Tag> got;
        if (t == 0) {  // one thread takes batches, the others one at a time
          auto n = ep->try_receive_batch(batch);
          if (!n || *n == 0) {
            std::this_thread::yield();
            continue;
          }
          for (std::size_t i = 0; i < *n; ++i) {
            Tag tag;
            std::memcpy(&tag, batch[i].data.data(), sizeof tag);
            got.push_back(tag);
          }
        } else {
          if (!ep->receive(m, 20ms)) continue;
          Tag tag;
          std::memcpy(&tag, m.data.data(), sizeof tag);
          got.push_back(tag);
        }
        const std::lock_guard<std::mutex> lock(mu);
        for (const Tag& tag : got) {
          if (!seen[tag.who].insert(tag.n).second) ++duplicates;
        }
        taken += got.size();
      }
    });
  }
  for (auto& t : pool) t.join();
  for (auto& c : senders) EXPECT_EQ(c.wait(60s), "exit 0");
  EXPECT_EQ(duplicates.load(), 0u);
  EXPECT_EQ(taken.load(), total);
  for (int s = 0; s < kSenders; ++s) {
    EXPECT_EQ(seen[static_cast<std::uint32_t>(s)].size(), per_sender) << "sender " << s;
  }
}

}  // namespace
}  // namespace vipc
