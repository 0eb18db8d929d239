// Hostile peers (docs/threat-model.md): a writer process that scribbles random bytes
// over every byte of the producer segment it can write, and a reader process that
// scribbles over the consumer segment. The other side must never crash, hang, read or
// write out of bounds, or hand out an impossible message; it reports the damage as
// Corrupted. And no holder of a descriptor can shrink a segment under the other
// side's mapping (SIGBUS).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.hpp"
#include "core/layout.hpp"
#include "core/ready_set.hpp"
#include "core/ring.hpp"
#include "core/segment.hpp"
#include "core/sys.hpp"
#include "support/process.hpp"
#include "support/random.hpp"
#include "support/sanitizers.hpp"

namespace vipc::core {
namespace {

using namespace std::chrono_literals;

using vipc::test::kSanitized;

// How long each hostile round scribbles.
constexpr auto kRoundTime = kSanitized ? 150ms : 250ms;
// The longest one receive / send call may take (its own deadline is 2 ms).
constexpr auto kCallBound = 1s;
// A child still running after this is ended by SIGALRM.
constexpr auto kChildAlarm = 60s;

using vipc::test::announce_seed;
using vipc::test::Child;
using vipc::test::Rng;
using vipc::test::run_seed;

void fill_random(unsigned char* p, std::size_t n, Rng& rng) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const std::uint64_t v = rng.next();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<unsigned char>(rng.next());
}

// ------------------------------------------------------------------ hostile writer

enum class Scribble {
  EveryByte,   // random bytes over the whole segment, header included
  SlotFields,  // positions published with the right sequence word but random contents
               // (descriptor, payload and cold line)
  SeqWords,    // sequence words set to nearby legal, illegal and random values
  Mixed,       // random short writes anywhere, interleaved with honest sends
};

const char* name_of(Scribble s) {
  switch (s) {
    case Scribble::EveryByte:
      return "every byte";
    case Scribble::SlotFields:
      return "slot fields";
    case Scribble::SeqWords:
      return "sequence words";
    case Scribble::Mixed:
      return "mixed";
  }
  return "?";
}

// The child: attaches as the ring's writer, sends honest messages, then scribbles
// over everything it can write for `duration`.
int hostile_writer(const RingSegments& seg, std::uint32_t capacity, Scribble kind,
                   std::uint64_t seed, std::chrono::milliseconds duration) {
  auto w = RingWriter::attach(seg.producer.get(), seg.consumer.get());
  if (!w) return 10;
  for (std::uint32_t i = 0; i < capacity / 2; ++i) {
    if (!w->try_send(i, &i, sizeof i)) return 11;
  }
  const std::size_t size = RingSegments::producer_bytes(capacity);
  auto map = sys::map_shared(seg.producer.get(), size, PROT_READ | PROT_WRITE);
  auto cons = sys::map_shared(seg.consumer.get(), RingSegments::consumer_bytes(), PROT_READ);
  if (!map || !cons) return 12;
  auto* bytes = static_cast<unsigned char*>(map->data());
  const layout::RingArrays arrays = layout::ring_arrays(capacity);
  auto* desc = reinterpret_cast<layout::SlotDesc*>(bytes + arrays.desc);
  auto* payload = reinterpret_cast<layout::SlotPayload*>(bytes + arrays.payload);
  auto* cold = reinterpret_cast<layout::SlotCold*>(bytes + arrays.cold);
  const auto* c = static_cast<const layout::ConsumerSegment*>(cons->data());
  Rng rng(seed);
  const Deadline end = deadline_after(duration);
  for (std::uint64_t round = 0; Clock::now() < end; ++round) {
    switch (kind) {
      case Scribble::EveryByte:
        fill_random(bytes, size, rng);
        break;
      case Scribble::SlotFields: {
        const std::uint64_t head = c->index.head.load(std::memory_order_relaxed);
        for (std::uint64_t pos = head; pos < head + capacity; ++pos) {
          const std::size_t idx = pos & (capacity - 1);
          layout::SlotDesc& s = desc[idx];
          const std::uint64_t r = rng.next();
          s.type = static_cast<std::uint32_t>(r);
          // Half within the legal range, half anything.
          s.length = static_cast<std::uint16_t>((r & (1u << 16)) != 0 ? (r >> 17) % 65 : r >> 20);
          s.cap_count = static_cast<std::uint8_t>((r & (1u << 18)) != 0 ? (r >> 24) % 5 : r >> 32);
          s.flags = static_cast<std::uint8_t>(r >> 40);
          s.gap = static_cast<std::uint32_t>(rng.next());
          fill_random(payload[idx].bytes, sizeof payload[idx].bytes, rng);
          fill_random(reinterpret_cast<unsigned char*>(&cold[idx]), sizeof cold[idx], rng);
          s.seq.store(static_cast<std::uint32_t>(pos + 1), std::memory_order_release);
        }
        break;
      }
      case Scribble::SeqWords: {
        const std::uint64_t head = c->index.head.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < capacity; ++i) {
          const std::uint64_t pos = head + i;
          std::uint32_t v = 0;
          switch (rng.below(4)) {
            case 0:
              v = static_cast<std::uint32_t>(pos + 1);
              break;
            case 1:
              v = static_cast<std::uint32_t>(pos + 1 - capacity);
              break;
            case 2:
              v = static_cast<std::uint32_t>(pos + 1 + capacity);
              break;
            default:
              v = static_cast<std::uint32_t>(rng.next());
              break;
          }
          desc[pos & (capacity - 1)].seq.store(v, std::memory_order_release);
        }
        break;
      }
      case Scribble::Mixed:
        for (int i = 0; i < 64; ++i) {
          const std::size_t len = 1 + rng.below(16);
          const std::size_t off = rng.below(static_cast<std::uint32_t>(size - len));
          fill_random(bytes + off, len, rng);
        }
        for (int i = 0; i < 4; ++i) {
          const std::uint64_t r = rng.next();
          (void)w->try_send(static_cast<std::uint32_t>(r), &r, sizeof r);
        }
        break;
    }
    if (round % 8 == 7) ::sched_yield();  // the reader may share this core
  }
  return 0;
}

struct ReaderTally {
  std::uint64_t calls = 0, messages = 0, corrupted = 0, would_block = 0, timeouts = 0, closed = 0,
                attach_refused = 0, unexpected = 0;
  std::uint32_t max_length = 0, max_caps = 0;
  Clock::duration slowest{};
  std::string first_unexpected;
};

// The parent: keeps reading with every receive call while the child scribbles.
void read_through_damage(const RingSegments& seg, std::optional<RingReader>& reader,
                         std::uint32_t max_message, Child& child, Rng& rng, ReaderTally& t) {
  std::array<SmallMessage, 16> out;
  std::uint64_t corrupt_streak = 0;
  std::uint64_t after_end = 0;
  const Deadline give_up = deadline_after(kRoundTime + 20s);
  while (after_end < 200 && Clock::now() < give_up) {
    if (child.ended()) ++after_end;
    const std::uint32_t op = rng.below(5);
    const std::size_t span = 1 + rng.below(out.size());
    for (auto& m : out) m = SmallMessage();
    const auto t0 = Clock::now();
    Result<std::size_t> got = std::size_t{0};
    auto one = [](Result<void> r) {
      return r ? Result<std::size_t>(std::size_t{1}) : Result<std::size_t>(r.error());
    };
    switch (op) {
      case 0:
        got = one(reader->try_receive(out[0]));
        break;
      case 1:
        got = reader->try_receive_batch(std::span<SmallMessage>(out).first(span));
        break;
      case 2:
        got = one(reader->receive(out[0], deadline_after(2ms)));
        break;
      case 3:
        got = reader->receive_batch(std::span<SmallMessage>(out).first(span), deadline_after(2ms));
        break;
      default: {
        auto r = reader->wait_readable(deadline_after(2ms));
        got = r ? Result<std::size_t>(std::size_t{0}) : Result<std::size_t>(r.error());
        break;
      }
    }
    const auto took = Clock::now() - t0;
    t.slowest = std::max(t.slowest, took);
    ++t.calls;
    if (got) {
      corrupt_streak = 0;
      t.messages += *got;
      for (std::size_t i = 0; i < *got; ++i) {
        t.max_length = std::max<std::uint32_t>(t.max_length, out[i].length);
        t.max_caps = std::max<std::uint32_t>(t.max_caps, out[i].cap_count);
        ASSERT_LE(out[i].length, max_message) << "message longer than the ring's maximum";
        ASSERT_LE(out[i].cap_count, kInlineCapsMax) << "more capabilities than a slot holds";
      }
      continue;
    }
    switch (got.error().code()) {
      case ErrorCode::Corrupted:
        ++t.corrupted;
        ++corrupt_streak;
        break;
      case ErrorCode::WouldBlock:
        ++t.would_block;
        break;
      case ErrorCode::Timeout:
        ++t.timeouts;
        break;
      case ErrorCode::ChannelClosed:
        ++t.closed;
        break;
      default:
        if (t.unexpected++ == 0) t.first_unexpected = got.error().message();
        break;
    }
    if (corrupt_streak >= 32) {
      // A poisoned reader stays poisoned; a fresh attach resumes at the consumer's
      // index, or is refused if the header is damaged too.
      corrupt_streak = 0;
      auto r = RingReader::attach(seg.producer.get(), seg.consumer.get());
      if (r) {
        reader.reset();
        reader.emplace(std::move(*r));
      } else {
        ++t.attach_refused;
        // A damaged header: Corrupted, or Unsupported when only the version changed.
        EXPECT_TRUE(r.error().code() == ErrorCode::Corrupted ||
                    r.error().code() == ErrorCode::Unsupported)
            << r.error().message();
      }
    }
  }
  // The reader never counts damage it did not report.
  EXPECT_LE(reader->stats().corrupt, t.corrupted);
}

TEST(HostileWriterTest, ReaderSurvivesAWriterScribblingOverItsSegment) {
  announce_seed();
  Rng rng(run_seed());
  ReaderTally total;
  std::vector<std::string> rounds;
  const std::array<Scribble, 4> kinds = {Scribble::EveryByte, Scribble::SlotFields,
                                         Scribble::SeqWords, Scribble::Mixed};
  for (std::size_t i = 0; i < 2 * kinds.size(); ++i) {
    const Scribble kind = kinds[i % kinds.size()];
    const std::uint32_t capacity = i < kinds.size() ? 64 : 8;
    const std::uint32_t max_message = i < kinds.size() ? 16 : 64;
    SCOPED_TRACE(testing::Message()
                 << name_of(kind) << ", capacity " << capacity << ", max " << max_message);
    auto seg = RingSegments::create({.capacity = capacity, .max_message_size = max_message});
    ASSERT_TRUE(seg) << seg.error().message();
    // Attached before the writer exists: the header is still intact.
    std::optional<RingReader> reader;
    {
      auto r = RingReader::attach(seg->producer.get(), seg->consumer.get());
      ASSERT_TRUE(r) << r.error().message();
      reader.emplace(std::move(*r));
    }
    const std::uint64_t child_seed = rng.next();
    auto child = Child::spawn(
        [&] { return hostile_writer(*seg, capacity, kind, child_seed, kRoundTime); }, kChildAlarm);
    ReaderTally t;
    read_through_damage(*seg, reader, max_message, child, rng, t);
    EXPECT_EQ(child.wait(10s), "exit 0");
    EXPECT_EQ(t.unexpected, 0u) << t.first_unexpected;
    EXPECT_LT(t.slowest, kCallBound)
        << "a call took " << std::chrono::duration<double, std::milli>(t.slowest).count() << " ms";
    std::printf(
        "  %-14s cap %2u max %2u: %llu calls, %llu messages, %llu corrupted, "
        "%llu refused re-attaches, %llu closed, slowest %.2f ms\n",
        name_of(kind), capacity, max_message, static_cast<unsigned long long>(t.calls),
        static_cast<unsigned long long>(t.messages), static_cast<unsigned long long>(t.corrupted),
        static_cast<unsigned long long>(t.attach_refused),
        static_cast<unsigned long long>(t.closed),
        std::chrono::duration<double, std::milli>(t.slowest).count());
    if (kind != Scribble::Mixed) {
      // These kinds damage what the reader looks at on every call.
      EXPECT_GT(t.corrupted, 0u);
    }
    total.corrupted += t.corrupted;
    total.messages += t.messages;
  }
  EXPECT_GT(total.corrupted, 0u);
}

// ------------------------------------------------------------------ hostile reader

// The child: attaches as the reader, takes a few messages, then scribbles over the
// consumer segment: first the head index alone, then every byte.
int hostile_reader(const RingSegments& seg, std::uint64_t seed,
                   std::chrono::milliseconds duration) {
  auto r = RingReader::attach(seg.producer.get(), seg.consumer.get());
  if (!r) return 10;
  SmallMessage m;
  for (int i = 0; i < 4; ++i) (void)r->receive(m, deadline_after(1s));
  auto map =
      sys::map_shared(seg.consumer.get(), RingSegments::consumer_bytes(), PROT_READ | PROT_WRITE);
  if (!map) return 12;
  auto* bytes = static_cast<unsigned char*>(map->data());
  auto* c = static_cast<layout::ConsumerSegment*>(map->data());
  Rng rng(seed);
  const Deadline half = deadline_after(duration / 2);
  const Deadline end = deadline_after(duration);
  for (std::uint64_t round = 0; Clock::now() < end; ++round) {
    if (Clock::now() < half) {
      const std::uint64_t h = c->index.head.load(std::memory_order_relaxed);
      std::uint64_t v = 0;
      switch (rng.below(5)) {
        case 0:
          v = h + 1 + rng.below(1000);
          break;  // ahead of what was sent
        case 1:
          v = h - 1 - rng.below(10);
          break;  // backwards
        case 2:
          v = rng.next();
          break;
        case 3:
          v = ~std::uint64_t{0};
          break;
        default:
          v = h + rng.below(2);
          break;  // plausible
      }
      c->index.head.store(v, std::memory_order_release);
    } else {
      fill_random(bytes, map->size(), rng);
    }
    if (round % 8 == 7) ::sched_yield();
  }
  return 0;
}

TEST(HostileWriterTest, WriterSurvivesAReaderScribblingOverItsSegment) {
  announce_seed();
  Rng rng(run_seed() ^ 0x5eed);
  constexpr std::uint32_t kCap = 8;
  auto seg = RingSegments::create({.capacity = kCap});
  ASSERT_TRUE(seg) << seg.error().message();
  // The writer also reports into a ready set, whose index the reader controls.
  auto ready = ReadySet::create(64);
  ASSERT_TRUE(ready) << ready.error().message();
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get(), -1, ready->fd());
  ASSERT_TRUE(w) << w.error().message();
  const std::size_t prod_size = RingSegments::producer_bytes(kCap);
  auto prod_view = sys::map_shared(seg->producer.get(), prod_size, PROT_READ);
  ASSERT_TRUE(prod_view) << prod_view.error().message();
  const auto* prod_bytes = static_cast<const unsigned char*>(prod_view->data());
  std::vector<unsigned char> header_before(prod_bytes, prod_bytes + layout::kRingSlotsOffset);

  const std::uint64_t child_seed = rng.next();
  auto child =
      Child::spawn([&] { return hostile_reader(*seg, child_seed, 2 * kRoundTime); }, kChildAlarm);
  std::uint64_t ok = 0, full = 0, corrupted = 0, closed = 0, timeouts = 0, unexpected = 0;
  std::string first_unexpected;
  Clock::duration slowest{};
  std::array<SmallMessage, 8> batch;
  std::uint64_t after_end = 0;
  const Deadline give_up = deadline_after(2 * kRoundTime + 20s);
  for (std::uint32_t seq = 0; after_end < 200 && Clock::now() < give_up; ++seq) {
    if (child.ended()) ++after_end;
    for (auto& m : batch) m = SmallMessage(seq, &seq, sizeof seq);
    const auto t0 = Clock::now();
    Result<void> r;
    switch (rng.below(4)) {
      case 0:
        r = w->try_send(batch[0]);
        break;
      case 1:
        r = w->try_send(seq, &seq, sizeof seq);
        break;
      case 2: {
        auto n = w->try_send_batch(std::span<const SmallMessage>(batch).first(1 + rng.below(8)));
        if (!n) r = n.error();
        break;
      }
      default:
        r = w->send(batch[0], deadline_after(2ms));
        break;
    }
    slowest = std::max(slowest, Clock::now() - t0);
    if (r) {
      ++ok;
      continue;
    }
    switch (r.error().code()) {
      case ErrorCode::ChannelFull:
        ++full;
        break;
      case ErrorCode::Corrupted:
        ++corrupted;
        break;
      case ErrorCode::ChannelClosed:
        ++closed;
        break;
      case ErrorCode::Timeout:
        ++timeouts;
        break;
      default:
        if (unexpected++ == 0) first_unexpected = r.error().message();
        break;
    }
    if ((ok + full + corrupted + closed + timeouts) % 64 == 0) std::this_thread::yield();
  }
  EXPECT_EQ(child.wait(10s), "exit 0");
  std::printf(
      "  writer: %llu sent, %llu full, %llu corrupted, %llu closed, %llu timeouts, "
      "slowest %.2f ms\n",
      static_cast<unsigned long long>(ok), static_cast<unsigned long long>(full),
      static_cast<unsigned long long>(corrupted), static_cast<unsigned long long>(closed),
      static_cast<unsigned long long>(timeouts),
      std::chrono::duration<double, std::milli>(slowest).count());
  EXPECT_EQ(unexpected, 0u) << first_unexpected;
  EXPECT_GT(corrupted, 0u);
  EXPECT_LT(slowest, kCallBound);

  // Nothing was written outside the slots: the header and padding are as created, and
  // the bytes after the last slot are still zero.
  EXPECT_EQ(
      std::memcmp(header_before.data(), prod_bytes, offsetof(layout::ProducerSegment, notify)), 0);
  const std::size_t pad1 = offsetof(layout::ProducerSegment, pad1);
  EXPECT_EQ(
      std::memcmp(header_before.data() + pad1, prod_bytes + pad1, layout::kRingSlotsOffset - pad1),
      0);
  const std::size_t slots_end = layout::ring_arrays(kCap).end;
  ASSERT_LT(slots_end, prod_size);
  EXPECT_TRUE(std::all_of(prod_bytes + slots_end, prod_bytes + prod_size,
                          [](unsigned char b) { return b == 0; }));
  // The ready set: the writer set bits only inside its 64-bit word array.
  auto rs_size = sys::file_size(ready->fd());
  ASSERT_TRUE(rs_size) << rs_size.error().message();
  auto rs_view = sys::map_shared(ready->fd(), static_cast<std::size_t>(*rs_size), PROT_READ);
  ASSERT_TRUE(rs_view) << rs_view.error().message();
  const auto* rs_bytes = static_cast<const unsigned char*>(rs_view->data());
  const std::size_t words_end = layout::kReadySetWordsOffset + sizeof(std::uint64_t);
  EXPECT_TRUE(std::all_of(rs_bytes + words_end, rs_bytes + rs_view->size(),
                          [](unsigned char b) { return b == 0; }));
}

// ------------------------------------------------------------------ truncation

TEST(HostileWriterTest, NoHolderCanShrinkOrGrowASegment) {
  auto seg = RingSegments::create({.capacity = 64});
  ASSERT_TRUE(seg) << seg.error().message();
  auto reader = RingReader::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(reader) << reader.error().message();
  const std::uint64_t prod_size = RingSegments::producer_bytes(64);

  // The hostile writer holds read-write descriptors to both halves and tries every
  // way to change their size or seals. Exit code: one bit per attempt that worked.
  auto child = Child::spawn(
      [&] {
        int worked = 0;
        auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
        if (!w) return 100;
        for (std::uint32_t i = 0; i < 64; ++i) {
          if (!w->try_send(i, &i, sizeof i)) return 101;
        }
        w->close();
        const int fds[] = {seg->producer.get(), seg->consumer.get()};
        for (int fd : fds) {
          const auto size = sys::file_size(fd);
          if (!size) return 102;
          const auto now = static_cast<off_t>(*size);
          if (::ftruncate(fd, 0) == 0) worked |= 1;
          if (::ftruncate(fd, now - static_cast<off_t>(page_size())) == 0) worked |= 2;
          if (::ftruncate(fd, now + static_cast<off_t>(page_size())) == 0) worked |= 4;
          if (::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) == 0) worked |= 8;
          // Re-opened through /proc (same uid): a new open file, same inode and seals.
          auto again = sys::reopen(fd, O_RDWR);
          if (again && ::ftruncate(again->get(), 0) == 0) worked |= 16;
        }
        return worked;
      },
      kChildAlarm);
  EXPECT_EQ(child.wait(10s), "exit 0");
  auto size = sys::file_size(seg->producer.get());
  ASSERT_TRUE(size) << size.error().message();
  EXPECT_EQ(*size, prod_size);
  // Every slot page is still there: a full lap reads every slot.
  SmallMessage m;
  for (std::uint32_t i = 0; i < 64; ++i) {
    auto r = reader->try_receive(m);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(m.type, i);
  }
  EXPECT_EQ(reader->try_receive(m).error().code(), ErrorCode::ChannelClosed);
}

TEST(HostileWriterTest, PunchingHolesZeroesPagesWithoutFaultingTheReader) {
  // F_SEAL_SHRINK does not stop FALLOC_FL_PUNCH_HOLE: the pages read back as zeros.
  // The reader sees impossible sequence words, not SIGBUS.
  auto seg = RingSegments::create({.capacity = 64});
  ASSERT_TRUE(seg) << seg.error().message();
  auto w = RingWriter::attach(seg->producer.get(), seg->consumer.get());
  auto reader = RingReader::attach(seg->producer.get(), seg->consumer.get());
  ASSERT_TRUE(w && reader);
  for (std::uint32_t i = 0; i < 40; ++i) ASSERT_TRUE(w->try_send(i, &i, sizeof i));
  SmallMessage m;
  for (std::uint32_t i = 0; i < 3; ++i) ASSERT_TRUE(reader->try_receive(m));
  const std::uint64_t size = RingSegments::producer_bytes(64);
  const int rc = ::fallocate(seg->producer.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                             static_cast<off_t>(size));
  if (rc != 0) GTEST_SKIP() << "fallocate(PUNCH_HOLE) not supported: errno " << errno;
  auto r = reader->try_receive(m);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::Corrupted) << r.error().message();
  EXPECT_EQ(sys::file_size(seg->producer.get()).value(), size);
}

TEST(HostileWriterTest, AnUnsealedSegmentWouldFaultItsReaderWhenTruncated) {
  // The control for the two tests above: without the seals, truncation under a mapping
  // is a SIGBUS on the next access. map_segment refuses such a segment for that reason.
  auto fd = sys::memfd_create("vipc-test-unsealed");
  ASSERT_TRUE(fd) << fd.error().message();
  const std::size_t size = 4 * page_size();
  ASSERT_TRUE(sys::ftruncate(fd->get(), size));
  auto map = sys::map_shared(fd->get(), size, PROT_READ);
  ASSERT_TRUE(map) << map.error().message();
  EXPECT_EQ(map_segment(fd->get(), layout::SegmentKind::RingProducer, PROT_READ).error().code(),
            ErrorCode::Corrupted);
  const auto* last_page = static_cast<const volatile unsigned char*>(map->data()) + 3 * page_size();
  auto child = Child::spawn(
      [&] {
        struct sigaction sa {};
        sa.sa_handler = SIG_DFL;
        ::sigaction(SIGBUS, &sa, nullptr);
        if (::ftruncate(fd->get(), 0) != 0) return 1;
        return static_cast<int>(*last_page);  // faults
      },
      kChildAlarm);
  EXPECT_EQ(child.wait(10s), "signal " + std::to_string(SIGBUS));
}

}  // namespace
}  // namespace vipc::core
