// Trace rings and the trace switch (core/trace_ring.hpp): records round-trip, a full
// ring counts instead of blocking, and the reader refuses whatever a hostile writer
// scribbles over its ring.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <vector>

#include "core/sys.hpp"
#include "core/trace_ring.hpp"

namespace vipc::core {
namespace {

TraceEvent event(std::uint64_t pos, std::uint16_t kind = layout::kTraceSend) {
  TraceEvent e;
  e.stamp = 1000 + pos;
  e.ring_id = 7;
  e.position = pos;
  e.kind = kind;
  e.cap_count = 1;
  e.type = 42;
  e.size = 16;
  return e;
}

// The ring as the writing process sees it, for scribbling.
layout::TraceRingSegment* raw(const TraceRingReader& r, sys::Mapping& keep) {
  auto m = sys::map_shared(r.fd(), static_cast<std::size_t>(sys::file_size(r.fd()).value()),
                           PROT_READ | PROT_WRITE);
  EXPECT_TRUE(m);
  keep = std::move(*m);
  return static_cast<layout::TraceRingSegment*>(keep.data());
}
layout::TraceRecord* records(layout::TraceRingSegment* s) {
  return reinterpret_cast<layout::TraceRecord*>(reinterpret_cast<unsigned char*>(s) +
                                                layout::kTraceRecordsOffset);
}

TEST(TraceRingTest, RecordsRoundTripInOrder) {
  auto r = TraceRingReader::create(64).value();
  auto w = TraceRingWriter::attach(r.fd()).value();
  for (std::uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(w.record(event(i)));
  std::vector<TraceEvent> out;
  EXPECT_EQ(r.drain(out, 100), 10u);
  ASSERT_EQ(out.size(), 10u);
  for (std::uint64_t i = 0; i < 10; ++i) {
    EXPECT_EQ(out[i].position, i);
    EXPECT_EQ(out[i].stamp, 1000 + i);
    EXPECT_EQ(out[i].ring_id, 7u);
    EXPECT_EQ(out[i].kind, layout::kTraceSend);
    EXPECT_EQ(out[i].cap_count, 1);
    EXPECT_EQ(out[i].type, 42u);
    EXPECT_EQ(out[i].size, 16u);
  }
  EXPECT_EQ(r.drain(out, 100), 0u);
  EXPECT_EQ(r.lost(), 0u);
  EXPECT_EQ(r.rejected(), 0u);
}

TEST(TraceRingTest, FullRingCountsLostRecordsInsteadOfWaiting) {
  auto r = TraceRingReader::create(64).value();
  auto w = TraceRingWriter::attach(r.fd()).value();
  for (std::uint64_t i = 0; i < 64; ++i) ASSERT_TRUE(w.record(event(i)));
  for (std::uint64_t i = 0; i < 5; ++i) EXPECT_FALSE(w.record(event(100 + i)));
  EXPECT_EQ(r.lost(), 5u);
  std::vector<TraceEvent> out;
  EXPECT_EQ(r.drain(out, 1000), 64u);
  // Drained: room again, and positions continue.
  EXPECT_TRUE(w.record(event(64)));
  out.clear();
  EXPECT_EQ(r.drain(out, 1000), 1u);
  EXPECT_EQ(out[0].position, 64u);
}

TEST(TraceRingTest, DrainTakesAtMostMax) {
  auto r = TraceRingReader::create(64).value();
  auto w = TraceRingWriter::attach(r.fd()).value();
  for (std::uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(w.record(event(i)));
  std::vector<TraceEvent> out;
  EXPECT_EQ(r.drain(out, 8), 8u);
  EXPECT_EQ(r.drain(out, 100), 12u);
  EXPECT_EQ(out.back().position, 19u);
}

TEST(TraceRingTest, CapacityMustBeAPowerOfTwoInRange) {
  for (std::uint32_t c : {0u, 1u, 63u, 100u, layout::kTraceCapacityMax * 2}) {
    auto r = TraceRingReader::create(c);
    ASSERT_FALSE(r) << c;
    EXPECT_EQ(r.error().code(), ErrorCode::InvalidArgument);
  }
}

TEST(TraceRingTest, ImpossibleTailIsResetAndCounted) {
  auto r = TraceRingReader::create(64).value();
  sys::Mapping keep;
  layout::TraceRingSegment* s = raw(r, keep);
  s->tail.value.store(1'000'000);
  std::vector<TraceEvent> out;
  EXPECT_EQ(r.drain(out, 100), 0u);
  EXPECT_EQ(r.rejected(), 64u);
  // The reader follows the writer's tail from there on.
  auto w = TraceRingWriter::attach(r.fd()).value();
  ASSERT_TRUE(w.record(event(5)));
  EXPECT_EQ(r.drain(out, 100), 1u);
}

TEST(TraceRingTest, MalformedRecordsAreRejected) {
  auto r = TraceRingReader::create(64).value();
  auto w = TraceRingWriter::attach(r.fd()).value();
  sys::Mapping keep;
  layout::TraceRingSegment* s = raw(r, keep);
  ASSERT_TRUE(w.record(event(0)));
  ASSERT_TRUE(w.record(event(1)));
  ASSERT_TRUE(w.record(event(2)));
  records(s)[0].kind = layout::kTraceKindMax + 1;  // unknown kind
  records(s)[1].size = kTraceSizeMax + 1;          // impossible size
  std::vector<TraceEvent> out;
  EXPECT_EQ(r.drain(out, 100), 1u);
  EXPECT_EQ(out[0].position, 2u);
  EXPECT_EQ(r.rejected(), 2u);
}

TEST(TraceRingTest, HandoffRecordsCarryTheirWordsAndAreValidated) {
  auto r = TraceRingReader::create(64).value();
  auto w = TraceRingWriter::attach(r.fd()).value();
  sys::Mapping keep;
  layout::TraceRingSegment* s = raw(r, keep);
  TraceEvent h = event(7, layout::kTraceBufferSend);
  h.bytes = std::uint64_t{5} << 30;  // beyond the 32-bit size
  h.peer = 4242;
  h.mode = 2;
  h.cap_count = 1025;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(w.record(h));
  // A channel record leaves the handoff words alone: the reader does not show them.
  ASSERT_TRUE(w.record(event(8)));
  records(s)[4].bytes = 99;
  records(s)[1].bytes = kTraceBytesMax + 1;        // impossible payload
  records(s)[2].mode = layout::kTraceModeMax + 1;  // unknown mode
  records(s)[3].cap_count = kTraceHandoffCapsMax + 1;
  std::vector<TraceEvent> out;
  ASSERT_EQ(r.drain(out, 100), 2u);
  EXPECT_EQ(out[0].kind, layout::kTraceBufferSend);
  EXPECT_EQ(out[0].bytes, std::uint64_t{5} << 30);
  EXPECT_EQ(out[0].peer, 4242u);
  EXPECT_EQ(out[0].mode, 2u);
  EXPECT_EQ(out[0].cap_count, 1025u);
  EXPECT_EQ(out[1].kind, layout::kTraceSend);
  EXPECT_EQ(out[1].bytes, 0u);
  EXPECT_EQ(r.rejected(), 3u);
}

TEST(TraceRingTest, RecordNeverPublishedIsSkippedAfterASecond) {
  auto r = TraceRingReader::create(64).value();
  auto w = TraceRingWriter::attach(r.fd()).value();
  sys::Mapping keep;
  layout::TraceRingSegment* s = raw(r, keep);
  // A writer that claimed position 0 and died before publishing it.
  s->tail.value.store(1);
  ASSERT_TRUE(w.record(event(1)));
  std::vector<TraceEvent> out;
  const std::uint64_t t0 = 5'000'000'000;
  EXPECT_EQ(r.drain(out, 100, t0), 0u);
  EXPECT_EQ(r.drain(out, 100, t0 + TraceRingReader::kStuckNs - 1), 0u);
  EXPECT_EQ(r.rejected(), 0u);
  EXPECT_EQ(r.drain(out, 100, t0 + TraceRingReader::kStuckNs), 1u);
  EXPECT_EQ(out[0].position, 1u);
  EXPECT_EQ(r.rejected(), 1u);
}

TEST(TraceRingTest, WriterRefusesABadHeader) {
  auto fd = sys::memfd_create("not-a-trace-ring").value();
  ASSERT_TRUE(sys::ftruncate(fd.get(), 4096));
  ASSERT_TRUE(sys::add_seals(fd.get(), F_SEAL_SHRINK));
  EXPECT_FALSE(TraceRingWriter::attach(fd.get()));
  auto sw = TraceSwitch::create().value();
  auto ro = sw.reader_fd().value();
  EXPECT_FALSE(TraceRingWriter::attach(ro.get()));  // a switch is not a ring
}

TEST(TraceSwitchTest, ClientsSeeTheSwitchReadOnly) {
  auto sw = TraceSwitch::create().value();
  auto fd = sw.reader_fd().value();
  auto m = map_trace_switch(fd.get()).value();
  EXPECT_EQ(m.enabled->load(), 0u);
  sw.set(true);
  EXPECT_TRUE(sw.enabled());
  EXPECT_EQ(m.enabled->load(), 1u);
  sw.set(false);
  EXPECT_EQ(m.enabled->load(), 0u);
  // The descriptor a client gets cannot be mapped writable.
  EXPECT_FALSE(sys::map_shared(fd.get(), 4096, PROT_READ | PROT_WRITE));
}

}  // namespace
}  // namespace vipc::core
