// Micro-benchmarks of single operations of the core, in one thread (no second process,
// so no cache-line transfer: these are the instruction costs, not IPC latencies).
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <utility>

#include "core/clock.hpp"
#include "core/histogram.hpp"
#include "core/ring.hpp"
#include "vipc/message.hpp"

namespace {

using vipc::SmallMessage;
using vipc::core::RingReader;
using vipc::core::RingSegments;
using vipc::core::RingWriter;

void BM_Cycles(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(vipc::core::cycles());
}
BENCHMARK(BM_Cycles);

void BM_HistogramRecord(benchmark::State& state) {
  vipc::core::Histogram h;
  std::uint64_t v = 100;
  for (auto _ : state) {
    h.record(v);
    v = (v * 2862933555777941757ULL + 3037000493ULL) >> 44;  // spread over ~1 M values
  }
  benchmark::DoNotOptimize(h.count());
}
BENCHMARK(BM_HistogramRecord);

// A ring with both ends in this thread.
struct LocalRing {
  RingSegments segments;
  RingWriter writer;
  RingReader reader;
};

LocalRing make_local_ring() {
  auto seg = RingSegments::create({});
  if (!seg) std::abort();
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
  if (!w || !r) std::abort();
  return LocalRing{std::move(seg).value(), std::move(w).value(), std::move(r).value()};
}

void BM_RingSendReceive(benchmark::State& state) {
  LocalRing ring = make_local_ring();
  const std::array<unsigned char, 64> payload{};
  SmallMessage m;
  for (auto _ : state) {
    if (!ring.writer.try_send(1, payload.data(), payload.size())) std::abort();
    if (!ring.reader.try_receive(m)) std::abort();
    benchmark::DoNotOptimize(m.length);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RingSendReceive);

void BM_RingSendReceiveBatch(benchmark::State& state) {
  LocalRing ring = make_local_ring();
  const std::array<unsigned char, 64> payload{};
  constexpr std::size_t kBatch = 32;
  std::array<SmallMessage, kBatch> in;
  in.fill(SmallMessage(1, payload.data(), payload.size()));
  std::array<SmallMessage, kBatch> out;
  for (auto _ : state) {
    auto s = ring.writer.try_send_batch(std::span<const SmallMessage>(in));
    if (!s || *s != kBatch) std::abort();
    auto r = ring.reader.try_receive_batch(std::span<SmallMessage>(out));
    if (!r || *r != kBatch) std::abort();
    benchmark::DoNotOptimize(out[0].length);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kBatch));
}
BENCHMARK(BM_RingSendReceiveBatch);

}  // namespace
