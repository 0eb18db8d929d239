// `vipc bench lookup`: the client's table of resolved objects (client::ObjectTable) beside
// the plainest honest hash map, looking up present names in one process.
//
// Both systems hold the same names (object-like names of up to 40 characters) with the same
// values and look them up in the same pseudo-random order. A sample is the time of
// `per_sample` back-to-back lookups (each result checked, so none is optimised away),
// divided by `per_sample` when reported, as the `send` scenario does. There is no peer
// process: a lookup involves no other party, so the measurement runs on the measuring
// CPU alone, with warm-up and bounded time from the run's Timing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "harness.hpp"

namespace vipc::bench::lookup_systems {

// The names in the table and the order they are looked up in (a power-of-two long
// sequence of indices, walked cyclically).
struct Workload {
  std::vector<std::string> names;
  std::vector<std::uint32_t> order;
};

// `count` distinct names and a pseudo-random lookup order, the same for a given seed.
Workload make_workload(std::size_t count, std::uint64_t seed);

// vipc: client::ObjectTable::lookup() of a present name (a table for exactly the
// workload's names, i.e. at most half of its slots in use).
Round vipc_lookup(const RunConfig& cfg, const Workload& w, std::size_t per_sample);
// hashmap: std::unordered_map<std::string, ResolvedObject> with a transparent hash,
// find(std::string_view) (no std::string built per lookup).
Round hashmap_lookup(const RunConfig& cfg, const Workload& w, std::size_t per_sample);

}  // namespace vipc::bench::lookup_systems
