// Shared pieces of the ReadySet tests: rings whose writers report into a set, and a
// second read-write map of the set, as every writer holds it (what a hostile writer can
// scribble on). One process; every helper fails the running test on an error.
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/ready_set.hpp"
#include "core/ring.hpp"
#include "core/segment.hpp"
#include "core/sys.hpp"

namespace vipc::core::test {

// One ring with its writer attached to a ready set.
struct Ring {
  RingSegments seg;
  RingWriter writer;
  RingReader reader;
};

// A ring whose writer marks the set of `ready_set_fd` (and writes `ready_set_eventfd`,
// when given, while the set's descriptor is armed).
inline std::unique_ptr<Ring> make_ring(int ready_set_fd, std::uint32_t capacity = 8,
                                       int ready_set_eventfd = -1) {
  auto seg = RingSegments::create({.capacity = capacity});
  EXPECT_TRUE(seg) << seg.error().message();
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get(), -1, ready_set_fd,
                              ready_set_eventfd);
  EXPECT_TRUE(w) << w.error().message();
  auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
  EXPECT_TRUE(r) << r.error().message();
  return std::make_unique<Ring>(Ring{std::move(*seg), std::move(*w), std::move(*r)});
}

inline ReadySet make_set(std::uint32_t capacity) {
  auto rs = ReadySet::create(capacity);
  EXPECT_TRUE(rs) << rs.error().message();
  return std::move(*rs);
}

inline void send_one(Ring& ring, std::uint32_t type = 1) {
  auto r = ring.writer.try_send(type, "x", 1);
  ASSERT_TRUE(r) << r.error().message();
}

// Messages taken until the ring is empty.
inline std::size_t drain(Ring& ring) {
  std::size_t n = 0;
  SmallMessage m;
  while (ring.reader.try_receive(m)) ++n;
  return n;
}

// Everything try_next returns until WouldBlock, in order.
inline std::vector<std::uint32_t> take_all(ReadySet& rs) {
  std::vector<std::uint32_t> out;
  for (;;) {
    auto r = rs.try_next();
    if (!r) {
      EXPECT_EQ(r.error().code(), ErrorCode::WouldBlock);
      return out;
    }
    out.push_back(*r);
  }
}

struct HostileView {
  sys::Mapping map;
  layout::ReadySetSegment* seg() const { return static_cast<layout::ReadySetSegment*>(map.data()); }
  std::atomic<std::uint64_t>* words() const {
    return reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<unsigned char*>(map.data()) +
                                                         layout::kReadySetWordsOffset);
  }
};

inline HostileView hostile_view(const ReadySet& rs) {
  auto m = map_segment(rs.fd(), layout::SegmentKind::ReadySet, PROT_READ | PROT_WRITE);
  EXPECT_TRUE(m) << m.error().message();
  return HostileView{std::move(m->mapping)};
}

}  // namespace vipc::core::test
