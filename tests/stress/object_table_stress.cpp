// ObjectTable under concurrent readers: one writer inserts, updates and erases names at
// random, as fast as it can, while reader threads look names up. Every value is a
// function of (name, version), so a torn read, a value of another name, or a value that
// was never written fails the run; each reader also checks that versions of a name never
// go backwards, that never-inserted names are never found, and that pinned names (only
// ever updated) are always found. Threads in one process, so ThreadSanitizer checks the
// memory ordering. Seeded, time-boxed, prints its seed.
//
// VIPC_STRESS_SEED=<n> repeats a run; VIPC_STRESS_SECONDS=<s> changes its length.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/object_table.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"

namespace vipc::client {
namespace {

using namespace std::chrono_literals;
using vipc::test::Rng;

std::chrono::milliseconds run_length() {
  return vipc::test::stress_length(vipc::test::kSanitized ? 1500ms : 2000ms);
}

constexpr std::size_t kNames = 48;   // names the writer churns
constexpr std::size_t kPinned = 8;   // of which the first kPinned are never erased
constexpr std::size_t kGhosts = 16;  // names never inserted
constexpr std::size_t kReaders = 2;

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

// The value written for version `version` of name `index`: every field depends on both.
ResolvedObject encode(std::size_t index, std::uint64_t version) {
  const std::uint64_t h = mix((std::uint64_t{index} << 40) ^ version);
  ResolvedObject v;
  v.id = index + 1;
  v.handle = version;
  v.kind = static_cast<std::uint32_t>(h);
  v.capacity = static_cast<std::uint32_t>(h >> 32);
  v.max_message_size = static_cast<std::uint32_t>(mix(h));
  v.flags = static_cast<std::uint32_t>(v.kind ^ v.capacity ^ v.max_message_size ^ version);
  return v;
}

// Names of many lengths (1..63), with shared prefixes, so chains mix lengths and names
// differ only late.
std::vector<std::string> make_names(Rng& rng, std::size_t count, const std::string& prefix) {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789._-/";  // no ":"
  std::vector<std::string> out;
  for (std::size_t i = 0; i < count; ++i) {
    std::string s = prefix + std::to_string(i) + ":";  // unique whatever follows
    const std::size_t len = 1 + rng.below(63);
    while (s.size() < len) s += kChars[rng.below(sizeof kChars - 1)];
    if (s.size() > 63) s.resize(63);
    out.push_back(s);
  }
  return out;
}

struct Failures {
  std::atomic<std::uint64_t> count{0};
  std::mutex mu;
  std::string first;

  void fail(const std::string& what) {
    if (count.fetch_add(1) == 0) {
      const std::lock_guard<std::mutex> lock(mu);
      first = what;
    }
  }
};

void run_stress(std::uint64_t hash_mask, std::uint64_t seed_salt) {
  const auto length = run_length();
  vipc::test::announce_seed(length);
  Rng rng(vipc::test::run_seed() ^ seed_salt);

  auto created = ObjectTable::create_with_hash_mask(64, hash_mask);
  ASSERT_TRUE(created) << created.error().message();
  ObjectTable& table = *created;

  // Distinct names: the index goes into the name (prefixes differ by role).
  const std::vector<std::string> names = make_names(rng, kNames, "n");
  const std::vector<std::string> ghosts = make_names(rng, kGhosts, "g");

  // published[i]: the newest version the writer has begun to write for name i (stored
  // before the table write, so a reader that saw version v also sees published >= v).
  std::array<std::atomic<std::uint64_t>, kNames> published{};
  std::array<std::uint64_t, kNames> version{};
  std::array<bool, kNames> present{};
  for (std::size_t i = 0; i < kPinned; ++i) {
    version[i] = 1;
    published[i].store(1, std::memory_order_relaxed);
    ASSERT_TRUE(table.insert(names[i], encode(i, 1)));
    present[i] = true;
  }

  std::atomic<bool> stop{false};
  Failures failures;
  std::array<std::uint64_t, kReaders> lookups{};
  std::array<std::uint64_t, kReaders> hits{};

  auto reader = [&](std::size_t r) {
    Rng rr(vipc::test::run_seed() ^ seed_salt ^ (0x1234567ULL * (r + 1)));
    std::array<std::uint64_t, kNames> last{};
    std::uint64_t n = 0, found = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      ++n;
      const std::uint32_t pick = rr.below(static_cast<std::uint32_t>(kNames + kGhosts));
      if (pick >= kNames) {
        const std::string& g = ghosts[pick - kNames];
        if (table.find(g).has_value()) failures.fail("found a name never inserted: " + g);
        continue;
      }
      const std::size_t i = pick;
      std::optional<ResolvedObject> v;
      if ((n & 7) == 0) {
        auto res = table.lookup(names[i]);
        if (res) {
          v = *res;
        } else if (res.error().code() != ErrorCode::NotFound) {
          failures.fail("lookup failed with " + std::string(to_string(res.error().code())));
        }
      } else {
        v = table.find(names[i]);
      }
      if (!v) {
        if (i < kPinned) failures.fail("pinned name not found: " + names[i]);
        continue;
      }
      ++found;
      if (*v != encode(i, v->handle)) {
        failures.fail("torn or foreign value for " + names[i] + ": id " + std::to_string(v->id) +
                      " handle " + std::to_string(v->handle));
        continue;
      }
      if (v->handle < last[i]) {
        failures.fail("version went backwards for " + names[i] + ": " + std::to_string(last[i]) +
                      " then " + std::to_string(v->handle));
      }
      last[i] = v->handle;
      if (v->handle > published[i].load(std::memory_order_acquire)) {
        failures.fail("value never written for " + names[i] + ": version " +
                      std::to_string(v->handle));
      }
    }
    lookups[r] = n;
    hits[r] = found;
  };

  std::vector<std::thread> threads;
  for (std::size_t r = 0; r < kReaders; ++r) threads.emplace_back(reader, r);

  std::uint64_t inserts = 0, updates = 0, erases = 0;
  const auto end = std::chrono::steady_clock::now() + length;
  while (std::chrono::steady_clock::now() < end && failures.count.load() == 0) {
    for (int k = 0; k < 256; ++k) {
      const std::size_t i = rng.below(static_cast<std::uint32_t>(kNames));
      if (present[i] && (i < kPinned || rng.below(4) != 0)) {
        const std::uint64_t v = ++version[i];
        published[i].store(v, std::memory_order_release);
        auto r = table.update(names[i], encode(i, v));
        if (!r) failures.fail("update failed: " + r.error().message());
        ++updates;
      } else if (present[i]) {
        auto r = table.erase(names[i]);
        if (!r) failures.fail("erase failed: " + r.error().message());
        present[i] = false;
        ++erases;
      } else {
        const std::uint64_t v = ++version[i];
        published[i].store(v, std::memory_order_release);
        auto r = table.insert(names[i], encode(i, v));
        if (!r) failures.fail("insert failed: " + r.error().message());
        present[i] = true;
        ++inserts;
      }
    }
  }
  stop.store(true, std::memory_order_relaxed);
  for (auto& t : threads) t.join();

  std::size_t live = 0;
  for (std::size_t i = 0; i < kNames; ++i) {
    if (present[i]) ++live;
    const auto v = table.find(names[i]);
    EXPECT_EQ(v.has_value(), present[i]) << names[i];
    if (v) {
      EXPECT_EQ(*v, encode(i, version[i])) << names[i];
    }
  }
  EXPECT_EQ(table.size(), live);

  std::printf("  writes: %llu inserts, %llu updates, %llu erases; tombstones left %zu\n",
              static_cast<unsigned long long>(inserts), static_cast<unsigned long long>(updates),
              static_cast<unsigned long long>(erases), table.tombstones());
  for (std::size_t r = 0; r < kReaders; ++r) {
    std::printf("  reader %zu: %llu lookups, %llu hits\n", r,
                static_cast<unsigned long long>(lookups[r]),
                static_cast<unsigned long long>(hits[r]));
    EXPECT_GT(lookups[r], 0u);
    EXPECT_GT(hits[r], 0u);
  }
  EXPECT_EQ(failures.count.load(), 0u) << failures.first;
  EXPECT_GT(inserts + updates + erases, 1000u);
}

TEST(ObjectTableStress, ReadersSeeOnlyWrittenValues) { run_stress(~std::uint64_t{0}, 0); }

// Only 3 hash bits kept: 8 home slots of 128 and tags equal but for the length, so
// probes walk long chains of tombstones and compare many names.
TEST(ObjectTableStress, ReadersSeeOnlyWrittenValuesOnCollidingChains) {
  run_stress(0x7, 0x9e3779b97f4a7c15ULL);
}

}  // namespace
}  // namespace vipc::client
