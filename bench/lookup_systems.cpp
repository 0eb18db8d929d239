#include "lookup_systems.hpp"

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "client/object_table.hpp"
#include "core/clock.hpp"

namespace vipc::bench::lookup_systems {
namespace {

constexpr std::size_t kOrderLength = 8192;  // lookups before the order repeats

// splitmix64: the workload is a function of the seed.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) noexcept : s_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::size_t below(std::size_t n) noexcept { return static_cast<std::size_t>(next() % n); }

 private:
  std::uint64_t s_;
};

client::ResolvedObject value_for(std::size_t index) {
  client::ResolvedObject v;
  v.id = index + 1;  // never 0: a miss reads as 0 below
  v.kind = 1;
  v.capacity = 1024;
  v.max_message_size = 64;
  v.handle = index;
  return v;
}

// Times `per_sample` lookups per sample through `find` (name -> id, 0 when missing) over
// the workload's order; warm-up and measurement lengths from cfg.timing. Every id is
// checked (folded into one word, tested after the run).
template <class Find>
Round measure(const RunConfig& cfg, const Workload& w, std::size_t per_sample, Find&& find) {
  std::vector<std::string_view> views(w.names.begin(), w.names.end());
  Round round;
  round.per_sample = per_sample;
  const std::uint64_t warmup_end = core::cycles() + seconds_to_cycles(cfg.timing.warmup_s);
  const std::uint64_t end = warmup_end + seconds_to_cycles(cfg.timing.measure_s);
  const std::size_t mask = w.order.size() - 1;
  std::size_t pos = 0;
  std::uint64_t wrong = 0;
  for (;;) {
    const std::uint64_t t0 = core::cycles();
    for (std::size_t k = 0; k < per_sample; ++k) {
      const std::uint32_t idx = w.order[(pos + k) & mask];
      wrong |= find(views[idx]) ^ (std::uint64_t{idx} + 1);
    }
    const std::uint64_t t1 = core::cycles();
    pos += per_sample;
    if (t0 >= warmup_end) round.hist.record(t1 - t0);
    if (t1 >= end) break;
  }
  if (wrong != 0) throw BenchError("lookup: a lookup returned a wrong value or nothing");
  return round;
}

struct TransparentHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

}  // namespace

Workload make_workload(std::size_t count, std::uint64_t seed) {
  static constexpr std::array<std::string_view, 16> kWords = {
      "camera", "front", "rear",  "imu",    "lidar", "ctl",     "telemetry", "robot",
      "arm",    "left",  "right", "frames", "cmd",   "planner", "map",       "status"};
  Rng rng(seed);
  Workload w;
  std::unordered_set<std::string> seen;
  while (w.names.size() < count) {
    std::string name(kWords[rng.below(kWords.size())]);
    const std::size_t parts = 1 + rng.below(3);
    for (std::size_t p = 0; p < parts; ++p) {
      name += rng.below(2) == 0 ? '/' : '.';
      name += kWords[rng.below(kWords.size())];
    }
    name += '-';
    name += std::to_string(rng.below(100000));
    if (name.size() > 40 || !seen.insert(name).second) continue;
    w.names.push_back(std::move(name));
  }
  w.order.resize(kOrderLength);
  for (auto& i : w.order) i = static_cast<std::uint32_t>(rng.below(count));
  return w;
}

Round vipc_lookup(const RunConfig& cfg, const Workload& w, std::size_t per_sample) {
  auto created = client::ObjectTable::create(w.names.size());
  if (!created) throw BenchError("ObjectTable::create: " + created.error().message());
  client::ObjectTable table = std::move(created).value();
  for (std::size_t i = 0; i < w.names.size(); ++i) {
    auto r = table.insert(w.names[i], value_for(i));
    if (!r) throw BenchError("ObjectTable::insert: " + r.error().message());
  }
  const client::ObjectTable& reader = table;  // lookups use the const, lock-free side only
  return measure(cfg, w, per_sample, [&reader](std::string_view name) -> std::uint64_t {
    auto r = reader.lookup(name);
    return r ? r->id : 0;
  });
}

Round hashmap_lookup(const RunConfig& cfg, const Workload& w, std::size_t per_sample) {
  std::unordered_map<std::string, client::ResolvedObject, TransparentHash, std::equal_to<>> map;
  map.reserve(w.names.size());
  for (std::size_t i = 0; i < w.names.size(); ++i) map.emplace(w.names[i], value_for(i));
  return measure(cfg, w, per_sample, [&map](std::string_view name) -> std::uint64_t {
    auto it = map.find(name);
    return it != map.end() ? it->second.id : 0;
  });
}

}  // namespace vipc::bench::lookup_systems
