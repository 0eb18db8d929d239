// SharedBuffer and SharedRegion across real processes and a real vipcd: each transfer
// mode's semantics, the kernel refusing what a mode forbids (a write after a move
// faults; a seal cannot be put on while someone maps the buffer writable; nobody can
// resize a buffer under a reader), hostile descriptors, and reference counts across
// kill -9 checked against the daemon's own descriptor census.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "broker/broker.hpp"
#include "core/buffer_descriptor.hpp"
#include "core/sys.hpp"
#include "support/daemon.hpp"
#include "support/daemon_fixture.hpp"
#include "support/pipe.hpp"
#include "support/process.hpp"
#include "vipc/buffer.hpp"
#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"
#include "vipc/topic.hpp"

namespace vipc {
namespace {

using namespace std::chrono_literals;
using test::Child;
using test::Daemon;
using test::Pipe;
using test::TempDir;

constexpr auto kAlarm = std::chrono::seconds(60);
constexpr int kFaulted = 42;  // a child's exit status when its forbidden write faulted

std::byte pattern(std::size_t i) { return static_cast<std::byte>((i * 131 + 7) & 0xff); }

void fill_pattern(std::span<std::byte> s) {
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = pattern(i);
}
bool has_pattern(std::span<const std::byte> s, std::size_t from = 0) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != pattern(from + i)) return false;
  }
  return true;
}

// A SIGSEGV or SIGBUS in a child ends it with kFaulted (also under sanitizers, which
// would otherwise report and exit with their own status).
void exit_on_fault() {
  struct sigaction sa {};
  sa.sa_handler = [](int) { ::_exit(kFaulted); };
  ::sigaction(SIGSEGV, &sa, nullptr);
  ::sigaction(SIGBUS, &sa, nullptr);
}

// The memfds this process opened since `before` (a forked child inherits its parent's).
std::vector<int> new_memfds(const test::FdCensus& before) {
  std::vector<int> out;
  auto now = test::fd_census(0);
  if (!now) return out;
  for (int fd : now->memfd_numbers) {
    bool old = false;
    for (int b : before.memfd_numbers) old = old || b == fd;
    if (!old) out.push_back(fd);
  }
  return out;
}

std::size_t memfds_of(pid_t pid) {
  auto c = test::fd_census(pid);
  return c ? c->memfds : 0;
}

// Only the SharedBuffers' memfds (a topic's own segments come and go with its members).
std::size_t buffers_of(pid_t pid) {
  auto c = test::fd_census(pid);
  return c ? c->buffer_memfds : 0;
}

// In a receiver child: its descriptors before it received anything.
test::FdCensus child_before;

class BufferTest : public test::DaemonTest {
 protected:
  // A child that connects, says so, takes one message, receives the buffer and runs
  // `check` on it; exits with check's status.
  template <class F>
  Child receiver(Pipe& ready, Pipe& messages, F check) {
    const std::string socket = daemon->socket();
    return Child::spawn(
        [&ready, &messages, socket, check]() -> int {
          auto crt = Runtime::connect_to(socket);
          if (!crt) return 10;
          child_before = test::fd_census(0).value_or(test::FdCensus{});
          if (!ready.put(std::uint8_t{1})) return 11;
          auto m = messages.get<SmallMessage>();
          if (!m) return 12;
          auto b = SharedBuffer::receive(*crt, *m);
          if (!b) return 13;
          return check(*crt, *b);
        },
        kAlarm);
  }
};

TEST_F(BufferTest, MoveHandsTheBytesOverAndTheSenderLosesItsCapability) {
  constexpr std::size_t kSize = 1 << 20;
  auto buf = SharedBuffer::allocate(*rt, kSize);
  ASSERT_TRUE(buf.ok()) << buf.error().message();
  auto bytes = buf->data();
  ASSERT_TRUE(bytes.ok());
  fill_pattern(*bytes);
  const Capability old = buf->capability();
  Pipe ready, messages;
  Child c = receiver(ready, messages, [](Runtime&, SharedBuffer& b) -> int {
    if (b.mode() != TransferMode::Move || !b.sealed() || b.size() != kSize) return 20;
    auto v = b.payload();
    if (!v || v->size() != kSize || !has_pattern(*v)) return 21;
    // The new owner writes into a private copy-on-write mapping.
    auto w = b.data();
    if (!w) return 22;
    (*w)[0] = std::byte{0};
    return 0;
  });
  ASSERT_TRUE(ready.get<std::uint8_t>().has_value());
  auto m = buf->send(TransferMode::Move, GrantTarget::process(c.pid()));
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_FALSE(buf->valid());
  ASSERT_TRUE(messages.put(*m));
  EXPECT_EQ(c.wait(30s), "exit 0");
  // The sender's capability went with the buffer.
  EXPECT_EQ(rt->derive(old, Rights::Read).error().code(), ErrorCode::InvalidCapability);
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(BufferTest, MovedBufferCannotBeWrittenByTheOldOwner) {
  // The old owner keeps its pointer and, being hostile, a copy of its read-write
  // descriptor taken before the move; the kernel refuses every write through either.
  Pipe result;
  const std::string socket = daemon->socket();
  const pid_t parent = ::getpid();
  Child owner = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        const auto before = test::fd_census(0).value_or(test::FdCensus{});
        auto b = SharedBuffer::allocate(*crt, 64 << 10);
        if (!b) return 11;
        auto w = b->data();
        if (!w) return 12;
        fill_pattern(*w);
        std::byte* stale = w->data();
        const auto mine = new_memfds(before);
        if (mine.size() != 1) return 13;
        const int kept = ::dup(mine[0]);
        auto m = b->send(TransferMode::Move, GrantTarget::process(parent));
        if (!m) return 14;
        if (!result.put(*m)) return 15;
        // A writable shared mapping of the sealed memfd: EPERM.
        void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, kept, 0);
        if (p != MAP_FAILED || errno != EPERM) return 16;
        // write(2): EPERM. Growing or shrinking: EPERM.
        const char x = 1;
        if (::pwrite(kept, &x, 1, 0) != -1 || errno != EPERM) return 17;
        if (::ftruncate(kept, 0) != -1 || errno != EPERM) return 18;
        // The old mapping is gone: the store faults.
        exit_on_fault();
        *reinterpret_cast<volatile std::byte*>(stale) = std::byte{0};
        return 19;
      },
      kAlarm);
  auto m = result.get<SmallMessage>();
  ASSERT_TRUE(m.has_value());
  auto got = SharedBuffer::receive(*rt, *m);
  ASSERT_TRUE(got.ok()) << got.error().message();
  EXPECT_EQ(owner.wait(30s), "exit " + std::to_string(kFaulted));
  auto v = got->view();
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(has_pattern(*v)) << "the bytes changed after the move";
  ASSERT_TRUE(got->release().ok());
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(BufferTest, TransferIsRefusedWhileAnyProcessMapsTheBufferWritable) {
  auto buf = SharedBuffer::allocate(*rt, 8192);
  ASSERT_TRUE(buf.ok());
  auto w = buf->data();
  ASSERT_TRUE(w.ok());
  // A forked child does not inherit the library's writable mapping (MADV_DONTFORK), but
  // it inherits the read-write descriptor, maps it writable itself and keeps it.
  const auto census = test::fd_census(0);
  ASSERT_TRUE(census.has_value());
  Pipe hold, done;
  Child keeper = Child::spawn(
      [&]() -> int {
        int mapped = 0;
        for (int fd : census->memfd_numbers) {
          if (sys::file_size(fd).value_or(0) != 8192) continue;
          if (::mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) != MAP_FAILED) {
            ++mapped;
          }
        }
        if (mapped != 1) return 20;
        (void)hold.put(std::uint8_t{1});
        (void)done.get<std::uint8_t>(30s);
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(hold.get<std::uint8_t>().has_value());
  auto m = buf->send(TransferMode::Share, GrantTarget::client(rt->client_id()));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code(), ErrorCode::PermissionDenied);
  EXPECT_EQ(m.error().sys_errno(), EBUSY);
  EXPECT_FALSE(buf->sealed());
  ASSERT_TRUE(done.put(std::uint8_t{1}));
  EXPECT_EQ(keeper.wait(10s), "exit 0");
  // Once nobody maps it writable, the same transfer goes through.
  auto again = buf->send(TransferMode::Share, GrantTarget::client(rt->client_id()));
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_TRUE(buf->sealed());
  auto mine = SharedBuffer::receive(*rt, *again);
  ASSERT_TRUE(mine.ok()) << mine.error().message();
}

TEST_F(BufferTest, ShareGivesEveryReaderTheSameSealedPagesReadOnly) {
  constexpr std::size_t kSize = 256 << 10;
  auto buf = SharedBuffer::allocate(*rt, kSize);
  ASSERT_TRUE(buf.ok());
  fill_pattern(*buf->data());
  constexpr std::size_t kReaders = 3;
  std::vector<std::unique_ptr<Pipe>> ready, messages;
  std::vector<Child> readers;
  for (std::size_t i = 0; i < kReaders; ++i) {
    ready.push_back(std::make_unique<Pipe>());
    messages.push_back(std::make_unique<Pipe>());
    readers.push_back(receiver(*ready.back(), *messages.back(), [](Runtime&, SharedBuffer& b) {
      if (b.mode() != TransferMode::Share || !b.sealed()) return 20;
      auto v = b.view();
      if (!v || !has_pattern(*v)) return 21;
      // Its descriptor is a read-only open: no writable shared mapping.
      const auto mine = new_memfds(child_before);
      if (mine.size() != 1) return 22;
      void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mine[0], 0);
      if (p != MAP_FAILED) return 23;
      // data() is copy-on-write: the write stays here.
      auto w = b.data();
      if (!w) return 24;
      (*w)[0] = std::byte{0xee};
      auto again = b.view();  // back to the shared pages
      if (!again || (*again)[0] != pattern(0)) return 25;
      return 0;
    }));
  }
  for (std::size_t i = 0; i < kReaders; ++i) {
    ASSERT_TRUE(ready[i]->get<std::uint8_t>().has_value());
    auto m = buf->send(TransferMode::Share, GrantTarget::process(readers[i].pid()));
    ASSERT_TRUE(m.ok()) << m.error().message();
    ASSERT_TRUE(messages[i]->put(*m));
  }
  for (auto& r : readers) EXPECT_EQ(r.wait(30s), "exit 0");
  // The sharer still reads it, unchanged.
  auto v = buf->view();
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(has_pattern(*v));
  ASSERT_TRUE(buf->release().ok());
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(BufferTest, CopyGivesTheReceiverItsOwnWritableBuffer) {
  constexpr std::size_t kSize = 100'000;
  auto buf = SharedBuffer::allocate(*rt, kSize);
  ASSERT_TRUE(buf.ok());
  fill_pattern(*buf->data());
  Pipe ready, messages;
  Child c = receiver(ready, messages, [](Runtime&, SharedBuffer& b) -> int {
    if (b.mode() != TransferMode::Copy || b.sealed()) return 20;
    // Its own: shared-writable pages nobody else holds.
    const auto mine = new_memfds(child_before);
    if (mine.size() != 1) return 21;
    if (!sys::fd_writable(mine[0]).value_or(false)) return 22;
    auto v = b.payload();
    if (!v || v->size() != 1000 || !has_pattern(*v, 5000)) return 23;
    auto w = b.data();
    if (!w) return 24;
    (*w)[0] = std::byte{1};
    return 0;
  });
  ASSERT_TRUE(ready.get<std::uint8_t>().has_value());
  auto m = buf->send(TransferMode::Copy, GrantTarget::process(c.pid()), 0, 5000, 1000);
  ASSERT_TRUE(m.ok()) << m.error().message();
  ASSERT_TRUE(messages.put(*m));
  EXPECT_EQ(c.wait(30s), "exit 0");
  auto v = buf->view();
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(has_pattern(*v));
  ASSERT_TRUE(buf->release().ok());
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(BufferTest, NoHolderCanShrinkOrGrowABuffer) {
  constexpr std::size_t kSize = 64 << 10;
  auto buf = SharedBuffer::allocate(*rt, kSize);
  ASSERT_TRUE(buf.ok());
  fill_pattern(*buf->data());
  // The creator holds the read-write descriptor; it still cannot resize the memfd.
  auto census = test::fd_census(0);
  ASSERT_TRUE(census.has_value());
  bool tried = false;
  for (int fd : census->memfd_numbers) {
    auto size = sys::file_size(fd);
    if (!size || *size != kSize) continue;
    tried = true;
    EXPECT_EQ(::ftruncate(fd, 0), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(::ftruncate(fd, kSize * 2), -1);
    EXPECT_EQ(errno, EPERM);
  }
  EXPECT_TRUE(tried);
  // A reader in another process touches the last page without SIGBUS.
  Pipe ready, messages;
  Child c = receiver(ready, messages, [](Runtime&, SharedBuffer& b) -> int {
    exit_on_fault();
    auto v = b.view();
    if (!v) return 20;
    return (*v)[kSize - 1] == pattern(kSize - 1) ? 0 : 21;
  });
  ASSERT_TRUE(ready.get<std::uint8_t>().has_value());
  auto m = buf->send(TransferMode::Share, GrantTarget::process(c.pid()));
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(messages.put(*m));
  EXPECT_EQ(c.wait(30s), "exit 0");
}

TEST_F(BufferTest, HostileDescriptorIsRejectedAndReleased) {
  auto buf = SharedBuffer::allocate(*rt, 4096);
  ASSERT_TRUE(buf.ok());
  // Not a buffer message at all: nothing is claimed.
  SmallMessage junk(1, "hello", 5);
  EXPECT_FALSE(SharedBuffer::carries_buffer(junk));
  EXPECT_EQ(SharedBuffer::receive(*rt, junk).error().code(), ErrorCode::Corrupted);

  struct Case {
    std::uint64_t offset, length, size;
  };
  const Case cases[] = {
      {4097, 0, 4096},               // offset past the end
      {1, 4096, 4096},               // runs one byte past the end
      {8, ~std::uint64_t{0}, 4096},  // length wraps around
      {0, 16, 1 << 20},              // claims a bigger buffer than the broker's
  };
  for (const Case& k : cases) {
    auto m = buf->send(TransferMode::Share, GrantTarget::client(rt->client_id()));
    ASSERT_TRUE(m.ok()) << m.error().message();
    layout::BufferDescriptor d;
    std::memcpy(&d, m->data.data(), sizeof d);
    d.offset = k.offset;
    d.length = k.length;
    d.size = k.size;
    std::memcpy(m->data.data(), &d, sizeof d);
    auto got = SharedBuffer::receive(*rt, *m);
    ASSERT_FALSE(got.ok()) << k.offset << " " << k.length;
    EXPECT_EQ(got.error().code(), ErrorCode::Corrupted);
  }
  // A handle someone else was given, or one made up: InvalidCapability.
  SmallMessage forged = *buf->send(TransferMode::Share, GrantTarget::client(rt->client_id()));
  forged.caps[0].value ^= 1;
  EXPECT_EQ(SharedBuffer::receive(*rt, forged).error().code(), ErrorCode::InvalidCapability);
  // Every capability the rejected receives claimed was released: once the owner lets go
  // (and the forged case's real handle expires with this connection), nothing is left.
  ASSERT_TRUE(buf->release().ok());
  rt.reset();  // its socket, pidfd and control lane's eventfd go too (set-up pinged)
  EXPECT_TRUE(test::wait_for(
      [&] {
        auto c = test::fd_census(daemon->pid());
        return c && c->total + 3 == baseline->total && c->memfds == baseline->memfds;
      },
      5s))
      << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(BufferTest, PendingTransfersKeepTheirOwnModes) {
  auto buf = SharedBuffer::allocate(*rt, 4096);
  ASSERT_TRUE(buf.ok());
  fill_pattern(*buf->data());
  auto share = buf->send(TransferMode::Share, GrantTarget::client(rt->client_id()));
  ASSERT_TRUE(share.ok());
  auto copy = buf->send(TransferMode::Copy, GrantTarget::client(rt->client_id()));
  ASSERT_TRUE(copy.ok());
  // Claimed in the other order: each still arrives as it was sent.
  auto shared = SharedBuffer::receive(*rt, *share);
  ASSERT_TRUE(shared.ok()) << shared.error().message();
  EXPECT_EQ(shared->mode(), TransferMode::Share);
  EXPECT_TRUE(shared->sealed());
  auto copied = SharedBuffer::receive(*rt, *copy);
  ASSERT_TRUE(copied.ok()) << copied.error().message();
  EXPECT_EQ(copied->mode(), TransferMode::Copy);
  EXPECT_FALSE(copied->sealed());
  auto v = copied->view();
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(has_pattern(*v));
  // A handle is good once.
  EXPECT_EQ(SharedBuffer::receive(*rt, *share).error().code(), ErrorCode::InvalidCapability);
}

TEST_F(BufferTest, RightsAreEnforcedByTheBroker) {
  auto buf = SharedBuffer::allocate(*rt, 4096);
  ASSERT_TRUE(buf.ok());
  auto m = buf->send(TransferMode::Share, GrantTarget::client(rt->client_id()));
  ASSERT_TRUE(m.ok());
  auto reader = SharedBuffer::receive(*rt, *m);
  ASSERT_TRUE(reader.ok());
  // A reader holds Map and Read only: it can neither move (Grant) nor share it on.
  EXPECT_EQ(reader->capability().rights, Rights::Map | Rights::Read);
  auto moved = reader->send(TransferMode::Move, GrantTarget::client(rt->client_id()));
  ASSERT_FALSE(moved.ok());
  EXPECT_EQ(moved.error().code(), ErrorCode::PermissionDenied);
  auto shared = reader->send(TransferMode::Share, GrantTarget::client(rt->client_id()));
  ASSERT_FALSE(shared.ok());
  EXPECT_EQ(shared.error().code(), ErrorCode::PermissionDenied);
  // A share that would give the receiver no descriptor (no Map) is refused up front.
  auto region = SharedRegion::create(*rt, 4096);
  ASSERT_TRUE(region.ok());
  auto no_map = region->share(GrantTarget::client(rt->client_id()), Rights::Read);
  ASSERT_FALSE(no_map.ok());
  EXPECT_EQ(no_map.error().code(), ErrorCode::InvalidArgument);
  // Nor can a share hand out more than the sharer holds.
  auto reader_region =
      SharedRegion::open(*rt, *region->share(GrantTarget::client(rt->client_id()),
                                             Rights::Map | Rights::Read | Rights::Share));
  ASSERT_TRUE(reader_region.ok());
  auto wider = reader_region->share(GrantTarget::client(rt->client_id()),
                                    Rights::Map | Rights::Read | Rights::Write);
  ASSERT_FALSE(wider.ok());
  EXPECT_EQ(wider.error().code(), ErrorCode::PermissionDenied);
  // Nothing at all for a transfer to a process that is not connected.
  auto nobody = buf->send(TransferMode::Share, GrantTarget::process(999'999'999));
  ASSERT_FALSE(nobody.ok());
  EXPECT_EQ(nobody.error().code(), ErrorCode::ProcessNotFound);
  // Sizes out of range.
  EXPECT_EQ(SharedBuffer::allocate(*rt, 0).error().code(), ErrorCode::InvalidArgument);
  EXPECT_EQ(SharedBuffer::allocate(*rt, std::size_t{1} << 40).error().code(),
            ErrorCode::InvalidArgument);
}

TEST_F(BufferTest, LastHolderKilledFreesTheMemfd) {
  // K readers share one buffer; the owner lets go; readers are killed (kill -9) in a
  // seeded random order. The broker keeps the memfd until the last one dies; the
  // last reader still reads the right bytes after all the others died.
  constexpr std::size_t kReaders = 4;
  constexpr std::size_t kSize = 1 << 20;
  const std::size_t memfds_before = memfds_of(daemon->pid());
  auto buf = SharedBuffer::allocate(*rt, kSize);
  ASSERT_TRUE(buf.ok());
  fill_pattern(*buf->data());
  std::vector<std::unique_ptr<Pipe>> ready, messages, go, verdict;
  std::vector<Child> readers;
  const std::string socket = daemon->socket();
  for (std::size_t i = 0; i < kReaders; ++i) {
    ready.push_back(std::make_unique<Pipe>());
    messages.push_back(std::make_unique<Pipe>());
    go.push_back(std::make_unique<Pipe>());
    verdict.push_back(std::make_unique<Pipe>());
    Pipe& r = *ready.back();
    Pipe& msg = *messages.back();
    Pipe& g = *go.back();
    Pipe& out = *verdict.back();
    readers.push_back(Child::spawn(
        [&r, &msg, &g, &out, socket]() -> int {
          auto crt = Runtime::connect_to(socket);
          if (!crt) return 10;
          (void)r.put(std::uint8_t{1});
          auto m = msg.get<SmallMessage>();
          if (!m) return 11;
          auto b = SharedBuffer::receive(*crt, *m);
          if (!b) return 12;
          auto v = b->view();
          if (!v) return 13;
          (void)r.put(std::uint8_t{2});
          // Asked again later: are the bytes still there?
          for (;;) {
            if (!g.get<std::uint8_t>(60s)) return 14;
            (void)out.put(static_cast<std::uint8_t>(has_pattern(*v) ? 1 : 0));
          }
        },
        kAlarm));
  }
  for (std::size_t i = 0; i < kReaders; ++i) {
    ASSERT_EQ(ready[i]->get<std::uint8_t>(), std::uint8_t{1});
    auto m = buf->send(TransferMode::Share, GrantTarget::process(readers[i].pid()));
    ASSERT_TRUE(m.ok()) << m.error().message();
    ASSERT_TRUE(messages[i]->put(*m));
    ASSERT_EQ(ready[i]->get<std::uint8_t>(), std::uint8_t{2});
  }
  ASSERT_TRUE(buf->release().ok());
  EXPECT_EQ(memfds_of(daemon->pid()), memfds_before + 1);

  const std::uint32_t seed = static_cast<std::uint32_t>(::getpid());
  std::printf("seed %u\n", seed);
  std::vector<std::size_t> order(kReaders);
  for (std::size_t i = 0; i < kReaders; ++i) order[i] = i;
  std::uint32_t x = seed | 1;
  for (std::size_t i = kReaders - 1; i > 0; --i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    std::swap(order[i], order[x % (i + 1)]);
  }
  for (std::size_t k = 0; k + 1 < kReaders; ++k) {
    const std::size_t victim = order[k];
    ::kill(readers[victim].pid(), SIGKILL);
    EXPECT_EQ(readers[victim].wait(10s), "signal 9");
    // No early free: the survivors still read it, and the broker still holds it.
    for (std::size_t j = k + 1; j < kReaders; ++j) {
      ASSERT_TRUE(go[order[j]]->put(std::uint8_t{1}));
      EXPECT_EQ(verdict[order[j]]->get<std::uint8_t>(), std::uint8_t{1}) << "reader " << order[j];
    }
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(memfds_of(daemon->pid()), memfds_before + 1) << "freed with holders alive";
  }
  const std::size_t last = order[kReaders - 1];
  ::kill(readers[last].pid(), SIGKILL);
  EXPECT_EQ(readers[last].wait(10s), "signal 9");
  EXPECT_TRUE(test::wait_for([&] { return memfds_of(daemon->pid()) == memfds_before; }, 5s));
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

TEST_F(BufferTest, RegionIsSharedWritableWithWriteAndReadOnlyWithout) {
  constexpr std::size_t kSize = 1 << 16;
  auto region = SharedRegion::create(*rt, kSize);
  ASSERT_TRUE(region.ok()) << region.error().message();
  EXPECT_EQ(region->permissions(), rights_for(ObjectKind::Region));
  EXPECT_FALSE(region->numa_node().has_value());
  auto w = region->data();
  ASSERT_TRUE(w.ok());
  std::memset(w->data(), 0, kSize);
  const std::string socket = daemon->socket();
  Pipe ready_w, handle_w, ready_r, handle_r, done_w;
  Child writer = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        (void)ready_w.put(std::uint8_t{1});
        auto h = handle_w.get<CapabilityHandle>();
        if (!h) return 11;
        auto r = SharedRegion::open(*crt, *h);
        if (!r) return 12;
        if (r->permissions() != (Rights::Map | Rights::Read | Rights::Write)) return 13;
        auto d = r->data();
        if (!d) return 14;
        std::memset(d->data(), 0x5a, 100);
        (void)done_w.put(std::uint8_t{1});
        return 0;
      },
      kAlarm);
  Child reader = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        const auto before = test::fd_census(0).value_or(test::FdCensus{});
        (void)ready_r.put(std::uint8_t{1});
        auto h = handle_r.get<CapabilityHandle>();
        if (!h) return 11;
        auto r = SharedRegion::open(*crt, *h);
        if (!r) return 12;
        const auto mine = new_memfds(before);
        if (mine.size() != 1) return 13;
        if (sys::fd_writable(mine[0]).value_or(true)) return 14;
        auto d = r->data();  // private copy-on-write
        if (!d) return 15;
        (*d)[200] = std::byte{0x77};
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(ready_w.get<std::uint8_t>().has_value());
  ASSERT_TRUE(ready_r.get<std::uint8_t>().has_value());
  auto hw =
      region->share(GrantTarget::process(writer.pid()), Rights::Map | Rights::Read | Rights::Write);
  ASSERT_TRUE(hw.ok()) << hw.error().message();
  auto hr = region->share(GrantTarget::process(reader.pid()), Rights::Map | Rights::Read);
  ASSERT_TRUE(hr.ok());
  // Regions are shared, never moved.
  auto d = rt->derive(region->capability(), Rights::Map | Rights::Read | Rights::Grant);
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(handle_w.put(*hw));
  ASSERT_TRUE(handle_r.put(*hr));
  ASSERT_TRUE(done_w.get<std::uint8_t>().has_value());
  EXPECT_EQ((*w)[0], std::byte{0x5a});
  EXPECT_EQ((*w)[99], std::byte{0x5a});
  EXPECT_EQ(writer.wait(30s), "exit 0");
  EXPECT_EQ(reader.wait(30s), "exit 0");
  EXPECT_EQ((*w)[200], std::byte{0});  // the reader's write stayed private
  // Both children are gone: the creator's capability and the derived one remain.
  EXPECT_TRUE(test::wait_for([&] { return region->refcount().value_or(0) == 2; }, 5s));
  ASSERT_TRUE(rt->release(*d).ok());
  ASSERT_TRUE(region->release().ok());
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

// The spec's LargeMessage: a buffer and more capabilities than a message has slots, in
// one message; a batch is granted whole or not at all, and only its target claims it.
TEST_F(BufferTest, LargeMessageCarriesABufferAndManyCapabilities) {
  constexpr std::size_t kSize = 1 << 20;
  constexpr std::size_t kCaps = 30;  // three pages of a batch
  auto buf = SharedBuffer::allocate(*rt, kSize);
  ASSERT_TRUE(buf.ok()) << buf.error().message();
  auto bytes = buf->data();
  ASSERT_TRUE(bytes.ok());
  fill_pattern(*bytes);
  std::vector<SharedRegion> regions;
  std::vector<BatchGrant> grants;
  for (std::size_t i = 0; i < kCaps; ++i) {
    auto r = SharedRegion::create(*rt, 4096);
    ASSERT_TRUE(r.ok()) << r.error().message();
    grants.push_back({r->capability(), Rights::Map | Rights::Read});
    regions.push_back(std::move(*r));
  }
  const std::string socket = daemon->socket();
  Pipe ready, messages, handles;
  Child target = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        if (!ready.put(std::uint8_t{1})) return 11;
        auto m = messages.get<SmallMessage>();
        if (!m) return 12;
        if (m->cap_count != 2) return 13;
        // The buffer alone cannot be taken from such a message.
        auto alone = SharedBuffer::receive(*crt, *m);
        if (alone || alone.error().code() != ErrorCode::InvalidArgument) return 14;
        auto got = LargeMessage::receive(*crt, *m);
        if (!got) return 15;
        if (got->type != 7 || got->payload.mode() != TransferMode::Share) return 16;
        auto v = got->payload.payload();
        if (!v || v->size() != kSize || !has_pattern(*v)) return 17;
        if (got->capabilities.size() != kCaps) return 18;
        for (const Capability& c : got->capabilities) {
          if (c.rights != (Rights::Map | Rights::Read)) return 19;
          // Real capabilities: the broker derives from them, and no more than they hold.
          auto d = crt->derive(c, Rights::Read);
          if (!d) return 20;
          auto more = crt->derive(c, Rights::Write);
          if (more || more.error().code() != ErrorCode::PermissionDenied) return 21;
        }
        // A second batch: the handle of one meant for another process is not ours.
        auto h = handles.get<CapabilityHandle>();
        if (!h) return 22;
        auto stolen = crt->claim_batch(*h);
        if (stolen || stolen.error().code() != ErrorCode::InvalidCapability) return 23;
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(ready.get<std::uint8_t>().has_value());
  // One capability without Grant spoils the whole batch, and the buffer does not move.
  auto weak = rt->derive(regions[0].capability(), Rights::Map | Rights::Read);
  ASSERT_TRUE(weak.ok());
  std::vector<BatchGrant> spoiled = grants;
  spoiled.push_back({*weak, Rights::Map | Rights::Read});
  auto refused = buf->send_with(TransferMode::Share, GrantTarget::process(target.pid()), spoiled);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), ErrorCode::PermissionDenied);
  EXPECT_FALSE(buf->sealed());
  auto m = buf->send_with(TransferMode::Share, GrantTarget::process(target.pid()), grants, 7);
  ASSERT_TRUE(m.ok()) << m.error().message();
  ASSERT_TRUE(messages.put(*m));
  auto other = rt->grant_batch(std::span(grants).first(3), GrantTarget::process(::getpid()));
  ASSERT_TRUE(other.ok()) << other.error().message();
  ASSERT_TRUE(handles.put(*other));
  EXPECT_EQ(target.wait(30s), "exit 0");
  // The theft did not burn it: its target still claims the three.
  auto mine = rt->claim_batch(*other);
  ASSERT_TRUE(mine.ok()) << mine.error().message();
  ASSERT_EQ(mine->size(), 3u);
  EXPECT_EQ(mine->at(0).rights, Rights::Map | Rights::Read);
  // Bad batches: empty, too many, no target.
  EXPECT_EQ(rt->grant_batch({}, GrantTarget::process(::getpid())).error().code(),
            ErrorCode::InvalidArgument);
  std::vector<BatchGrant> too_many(1025, grants[0]);
  EXPECT_EQ(rt->grant_batch(too_many, GrantTarget::process(::getpid())).error().code(),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(rt->grant_batch(grants, GrantTarget{}).error().code(), ErrorCode::InvalidArgument);
  for (const Capability& c : *mine) ASSERT_TRUE(rt->release(c).ok());
  ASSERT_TRUE(rt->release(*weak).ok());
  regions.clear();
  ASSERT_TRUE(buf->release().ok());
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

// A named region: opened by name from other processes with at most the rights its
// creator allowed, in one namespace with channels, gone with the region, and closed to
// other uids unless world-openable.
TEST_F(BufferTest, NamedRegionIsOpenedByNameWithTheRightsItsCreatorAllowed) {
  constexpr std::size_t kSize = 1 << 16;
  RegionAccess shared;
  shared.open_rights = Rights::Map | Rights::Read | Rights::Write;
  auto region = SharedRegion::create(*rt, "cam.frames", kSize, shared);
  ASSERT_TRUE(region.ok()) << region.error().message();
  auto w = region->data();
  ASSERT_TRUE(w.ok());
  fill_pattern(*w);
  auto readonly = SharedRegion::create(*rt, "cam.config", 4096);
  ASSERT_TRUE(readonly.ok()) << readonly.error().message();
  // One namespace: names are unique across regions, channels and topics.
  EXPECT_EQ(SharedRegion::create(*rt, "cam.frames", 4096).error().code(), ErrorCode::AlreadyExists);
  EXPECT_EQ(Endpoint::create(*rt, "cam.frames").error().code(), ErrorCode::AlreadyExists);
  auto info = rt->lookup("cam.frames");
  ASSERT_TRUE(info.ok()) << info.error().message();
  EXPECT_EQ(info->kind, ObjectKind::Region);
  EXPECT_EQ(SharedRegion::open(*rt, "cam.nothing", Rights::Map | Rights::Read).error().code(),
            ErrorCode::NotFound);
  const std::string socket = daemon->socket();
  Pipe done;
  Child writer = Child::spawn(
      [&]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        // More than the creator allowed (Share) is refused.
        auto more =
            SharedRegion::open(*crt, "cam.frames", Rights::Map | Rights::Read | Rights::Share);
        if (more || more.error().code() != ErrorCode::PermissionDenied) return 11;
        auto r = SharedRegion::open(*crt, "cam.frames", Rights::Map | Rights::Read | Rights::Write);
        if (!r) return 12;
        if (r->size() != kSize) return 13;
        auto d = r->data();
        if (!d || !has_pattern(*d)) return 14;
        std::memset(d->data(), 0x5a, 100);  // shared: the creator sees it
        // The read-only one: Write refused; read-only pages, private writes.
        auto no =
            SharedRegion::open(*crt, "cam.config", Rights::Map | Rights::Read | Rights::Write);
        if (no || no.error().code() != ErrorCode::PermissionDenied) return 15;
        auto ro = SharedRegion::open(*crt, "cam.config", Rights::Map | Rights::Read);
        if (!ro) return 16;
        auto p = ro->data();  // private copy-on-write
        if (!p) return 17;
        (*p)[0] = std::byte{0x77};
        (void)done.put(std::uint8_t{1});
        return 0;
      },
      kAlarm);
  ASSERT_TRUE(done.get<std::uint8_t>().has_value());
  EXPECT_EQ(writer.wait(30s), "exit 0");
  EXPECT_EQ((*w)[0], std::byte{0x5a});
  EXPECT_EQ((*w)[99], std::byte{0x5a});
  auto cv = readonly->view();
  ASSERT_TRUE(cv.ok());
  EXPECT_EQ((*cv)[0], std::byte{0});  // the child's write stayed private

  // Another uid: refused, until a region is world-openable (the socket made reachable).
  if (::geteuid() == 0) {
    ASSERT_EQ(::chmod(dir.path().c_str(), 0711), 0);
    ASSERT_EQ(::chmod(socket.c_str(), 0777), 0);
    RegionAccess world;
    world.world_openable = true;
    auto open_to_all = SharedRegion::create(*rt, "cam.public", 4096, world);
    ASSERT_TRUE(open_to_all.ok()) << open_to_all.error().message();
    Child stranger = Child::spawn(
        [&]() -> int {
          if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) {
            return 10;
          }
          auto crt = Runtime::connect_to(socket);
          if (!crt) return 11;
          auto mine = SharedRegion::open(*crt, "cam.frames", Rights::Map | Rights::Read);
          if (mine || mine.error().code() != ErrorCode::PermissionDenied) return 12;
          auto pub = SharedRegion::open(*crt, "cam.public", Rights::Map | Rights::Read);
          if (!pub) return 13;
          auto v = pub->view();
          return v && v->size() == 4096 ? 0 : 14;
        },
        kAlarm);
    EXPECT_EQ(stranger.wait(30s), "exit 0");
    ASSERT_TRUE(open_to_all->release().ok());
  }
  // The name goes with the region; it can be taken again.
  ASSERT_TRUE(readonly->release().ok());
  EXPECT_TRUE(test::wait_for(
      [&] {
        auto r = SharedRegion::open(*rt, "cam.config", Rights::Map | Rights::Read);
        return !r && r.error().code() == ErrorCode::NotFound;
      },
      5s));
  auto again = SharedRegion::create(*rt, "cam.config", 4096);
  ASSERT_TRUE(again.ok()) << again.error().message();
  ASSERT_TRUE(again->release().ok());
  ASSERT_TRUE(region->release().ok());
  EXPECT_TRUE(back_to_baseline()) << test::describe(test::fd_census(daemon->pid()));
}

// ------------------------------------------------------------ topics

// A subscriber child: subscribes to `topic`, says so, then takes `count` messages, each
// carrying a buffer of `size` bytes with the pattern and type k, and releases each.
int subscribe_and_take(const std::string& socket, const std::string& topic, Pipe& ready,
                       std::uint32_t count, std::size_t size) {
  auto crt = Runtime::connect_to(socket);
  if (!crt) return 10;
  auto sub = Subscription::subscribe(*crt, topic);
  if (!sub) return 11;
  if (!ready.put(std::uint8_t{1})) return 12;
  for (std::uint32_t k = 0; k < count; ++k) {
    SmallMessage m;
    auto got = sub->receive(m, 20s);
    if (!got || got->missed != 0) return 13;
    if (m.type != k || !SharedBuffer::carries_buffer(m)) return 14;
    auto b = SharedBuffer::receive(*crt, m);
    if (!b) return 15;
    if (b->mode() != TransferMode::Share || b->size() != size) return 16;
    auto v = b->payload();
    if (!v || !has_pattern(*v)) return 17;
    if (!b->release()) return 18;
  }
  return 0;
}

TEST_F(BufferTest, TopicPayloadIsPublishedOnceForEverySubscriberAndFreedAfterTheLast) {
  constexpr int kSubscribers = 3;
  constexpr std::uint32_t kMessages = 4;
  constexpr std::size_t kSize = 1 << 20;
  const std::size_t buffers_before = buffers_of(daemon->pid());
  TopicOptions to;
  to.capacity = 16;
  auto topic = Topic::create(*rt, "frames", to);
  ASSERT_TRUE(topic.ok()) << topic.error().message();
  // This process subscribes too, to hand one message to a process that is not a
  // subscriber.
  std::optional<Subscription> own;
  {
    auto s = Subscription::subscribe(*rt, "frames");
    ASSERT_TRUE(s.ok()) << s.error().message();
    own.emplace(std::move(*s));
  }
  const std::string socket = daemon->socket();
  std::vector<std::unique_ptr<Pipe>> ready;
  std::vector<Child> subs;
  for (int i = 0; i < kSubscribers; ++i) {
    ready.push_back(std::make_unique<Pipe>());
    Pipe& r = *ready.back();
    subs.push_back(Child::spawn(
        [&r, socket] { return subscribe_and_take(socket, "frames", r, kMessages, kSize); },
        kAlarm));
  }
  for (auto& r : ready) ASSERT_EQ(r->get<std::uint8_t>(), std::uint8_t{1});
  for (std::uint32_t k = 0; k < kMessages; ++k) {
    auto buf = SharedBuffer::allocate(*rt, kSize);
    ASSERT_TRUE(buf.ok());
    fill_pattern(*buf->data());
    ASSERT_TRUE(topic->publish_buffer(*buf, k).ok());
    EXPECT_TRUE(buf->sealed());
    ASSERT_TRUE(buf->release().ok());  // the subscribers' claims keep it alive
  }
  for (auto& c : subs) EXPECT_EQ(c.wait(30s), "exit 0");

  // The message names the share; only a subscriber of the topic may claim it.
  SmallMessage first;
  auto got = own->receive(first, 5s);
  ASSERT_TRUE(got.ok()) << got.error().message();
  Pipe verdict;
  Child stranger = Child::spawn(
      [&verdict, &first, socket]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        auto b = SharedBuffer::receive(*crt, first);
        (void)verdict.put(b ? std::uint16_t{0} : static_cast<std::uint16_t>(b.error().code()));
        return 0;
      },
      kAlarm);
  EXPECT_EQ(verdict.get<std::uint16_t>(), static_cast<std::uint16_t>(ErrorCode::InvalidCapability));
  EXPECT_EQ(stranger.wait(10s), "exit 0");
  {
    auto b = SharedBuffer::receive(*rt, first);
    ASSERT_TRUE(b.ok()) << b.error().message();
    auto v = b->payload();
    ASSERT_TRUE(v.ok());
    EXPECT_TRUE(has_pattern(*v));
    // And only once per subscriber.
    EXPECT_EQ(SharedBuffer::receive(*rt, first).error().code(), ErrorCode::InvalidCapability);
  }
  // Three buffers are still waiting for this process's subscription.
  EXPECT_EQ(buffers_of(daemon->pid()), buffers_before + kMessages - 1);
  own.reset();
  topic = Error(ErrorCode::ChannelClosed, "gone");
  rt.reset();  // the last claimant disconnects: every share and buffer goes
  EXPECT_TRUE(test::wait_for([&] { return buffers_of(daemon->pid()) == buffers_before; }, 5s));
}

TEST_F(BufferTest, TopicPayloadHeldByAKilledSubscriberIsFreedWithIt) {
  const std::size_t buffers_before = buffers_of(daemon->pid());
  auto topic = Topic::create(*rt, "held");
  ASSERT_TRUE(topic.ok());
  const std::string socket = daemon->socket();
  Pipe holder_ready, idler_ready, idler_go;
  Child holder = Child::spawn(
      [&holder_ready, socket]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        auto sub = Subscription::subscribe(*crt, "held");
        if (!sub) return 11;
        (void)holder_ready.put(std::uint8_t{1});
        SmallMessage m;
        if (!sub->receive(m, 20s)) return 12;
        auto b = SharedBuffer::receive(*crt, m);
        if (!b) return 13;
        auto v = b->view();
        if (!v || !has_pattern(*v)) return 14;
        (void)holder_ready.put(std::uint8_t{2});
        ::pause();  // holds it until killed
        return 15;
      },
      kAlarm);
  // A subscriber that never reads: the share waits for it until it leaves.
  Child idler = Child::spawn(
      [&idler_ready, &idler_go, socket]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        auto sub = Subscription::subscribe(*crt, "held");
        if (!sub) return 11;
        (void)idler_ready.put(std::uint8_t{1});
        return idler_go.get<std::uint8_t>(30s) ? 0 : 12;
      },
      kAlarm);
  ASSERT_EQ(holder_ready.get<std::uint8_t>(), std::uint8_t{1});
  ASSERT_EQ(idler_ready.get<std::uint8_t>(), std::uint8_t{1});
  {
    auto buf = SharedBuffer::allocate(*rt, 1 << 20);
    ASSERT_TRUE(buf.ok());
    fill_pattern(*buf->data());
    ASSERT_TRUE(topic->publish_buffer(*buf).ok());
  }  // the publisher lets go of its own capability
  ASSERT_EQ(holder_ready.get<std::uint8_t>(), std::uint8_t{2});
  EXPECT_EQ(buffers_of(daemon->pid()), buffers_before + 1);
  ASSERT_TRUE(idler_go.put(std::uint8_t{1}));
  EXPECT_EQ(idler.wait(10s), "exit 0");
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(buffers_of(daemon->pid()), buffers_before + 1) << "freed under a live holder";
  ::kill(holder.pid(), SIGKILL);
  EXPECT_EQ(holder.wait(10s), "signal 9");
  EXPECT_TRUE(test::wait_for([&] { return buffers_of(daemon->pid()) == buffers_before; }, 5s));
}

TEST_F(BufferTest, TopicSharesAreBoundedPerPublisher) {
  // A subscriber that claims nothing must not make the broker keep every payload:
  // under Drop the publisher's oldest unclaimed share makes room; under HoldBack the
  // publisher is told (ChannelFull) instead.
  const std::uint32_t limit = broker::BrokerOptions{}.max_pending_grants_per_client;
  const std::size_t buffers_before = buffers_of(daemon->pid());
  TopicOptions drop;
  drop.capacity = 256;
  auto loose = Topic::create(*rt, "loose", drop);
  ASSERT_TRUE(loose.ok());
  TopicOptions hold = drop;
  hold.policy = TopicPolicy::HoldBack;
  auto strict = Topic::create(*rt, "strict", hold);
  ASSERT_TRUE(strict.ok());
  const std::string socket = daemon->socket();
  Pipe ready, go;
  Child idler = Child::spawn(
      [&ready, &go, socket]() -> int {
        auto crt = Runtime::connect_to(socket);
        if (!crt) return 10;
        auto a = Subscription::subscribe(*crt, "loose");
        auto b = Subscription::subscribe(*crt, "strict");
        if (!a || !b) return 11;
        (void)ready.put(std::uint8_t{1});
        return go.get<std::uint8_t>(60s) ? 0 : 12;
      },
      kAlarm);
  ASSERT_EQ(ready.get<std::uint8_t>(), std::uint8_t{1});
  for (std::uint32_t k = 0; k < limit + 8; ++k) {
    auto buf = SharedBuffer::allocate(*rt, 4096);
    ASSERT_TRUE(buf.ok());
    auto p = loose->publish_buffer(*buf, k);
    ASSERT_TRUE(p.ok()) << k << ": " << p.error().message();
  }
  EXPECT_EQ(buffers_of(daemon->pid()), buffers_before + limit);
  // The Drop topic's shares fill the publisher's limit: HoldBack is refused, not
  // evicting anything.
  auto buf = SharedBuffer::allocate(*rt, 4096);
  ASSERT_TRUE(buf.ok());
  auto r = strict->publish_buffer(*buf);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelFull);
  ASSERT_TRUE(buf->release().ok());
  ASSERT_TRUE(go.put(std::uint8_t{1}));
  EXPECT_EQ(idler.wait(10s), "exit 0");
  EXPECT_TRUE(test::wait_for([&] { return buffers_of(daemon->pid()) == buffers_before; }, 5s));
}

}  // namespace
}  // namespace vipc
