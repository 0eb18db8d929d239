#include "core/sys.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <new>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace vipc::sys {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

// True when fd is an open descriptor of this process.
bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

bool fd_is_closed(int fd) {
  errno = 0;
  return ::fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

bool has_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

// True when every page of [addr, addr + len) is mapped (msync fails with ENOMEM on
// unmapped ranges).
bool is_mapped(void* addr, std::size_t len) { return ::msync(addr, len, MS_ASYNC) == 0; }

UniqueFd make_memfd(std::uint64_t size) {
  auto fd = memfd_create("vipc-sys-test");
  EXPECT_TRUE(fd.ok()) << fd.error().message();
  if (!fd.ok()) return UniqueFd();
  auto t = ftruncate(fd->get(), size);
  EXPECT_TRUE(t.ok()) << t.error().message();
  return std::move(*fd);
}

struct timespec monotonic_in(milliseconds d) {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const long long ns = static_cast<long long>(ts.tv_nsec) +
                       std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  ts.tv_sec += static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1'000'000'000;
    ts.tv_sec -= 1;
  }
  return ts;
}

// Waits for a forked child and returns its wait status.
int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// ---- UniqueFd --------------------------------------------------------------

TEST(SysUniqueFdTest, DestructorClosesDescriptor) {
  int raw = -1;
  {
    UniqueFd fd = make_memfd(0);
    raw = fd.get();
    ASSERT_TRUE(fd.valid());
    EXPECT_TRUE(fd_is_open(raw));
  }
  EXPECT_TRUE(fd_is_closed(raw));
}

TEST(SysUniqueFdTest, DefaultIsInvalid) {
  UniqueFd fd;
  EXPECT_FALSE(fd.valid());
  EXPECT_EQ(fd.get(), -1);
}

TEST(SysUniqueFdTest, MoveConstructionTransfersOwnershipAndClosesOnce) {
  std::optional<UniqueFd> from(make_memfd(0));
  const int raw = from->get();
  {
    UniqueFd to(std::move(*from));
    EXPECT_FALSE(from->valid());
    EXPECT_EQ(to.get(), raw);
    EXPECT_TRUE(fd_is_open(raw));
  }
  EXPECT_TRUE(fd_is_closed(raw));
  // Put another open file at the same number: the moved-from object must not close it.
  UniqueFd other = make_memfd(0);
  ASSERT_EQ(::dup2(other.get(), raw), raw);
  from.reset();
  EXPECT_TRUE(fd_is_open(raw));
  ::close(raw);
}

TEST(SysUniqueFdTest, MoveAssignmentClosesPreviousAndTakesOwnership) {
  UniqueFd a = make_memfd(0);
  UniqueFd b = make_memfd(0);
  const int raw_a = a.get();
  const int raw_b = b.get();
  a = std::move(b);
  EXPECT_TRUE(fd_is_closed(raw_a));
  EXPECT_EQ(a.get(), raw_b);
  EXPECT_FALSE(b.valid());
  EXPECT_TRUE(fd_is_open(raw_b));
}

TEST(SysUniqueFdTest, SelfMoveAssignmentKeepsDescriptorOpen) {
  UniqueFd a = make_memfd(0);
  const int raw = a.get();
  UniqueFd& alias = a;
  a = std::move(alias);
  EXPECT_EQ(a.get(), raw);
  EXPECT_TRUE(fd_is_open(raw));
}

TEST(SysUniqueFdTest, ReleaseGivesUpOwnershipWithoutClosing) {
  int raw = -1;
  {
    UniqueFd fd = make_memfd(0);
    raw = fd.release();
    EXPECT_FALSE(fd.valid());
  }
  EXPECT_TRUE(fd_is_open(raw));
  ::close(raw);
}

TEST(SysUniqueFdTest, ResetClosesOldAndAdoptsNew) {
  UniqueFd fd = make_memfd(0);
  const int old_raw = fd.get();
  const int new_raw = make_memfd(0).release();
  fd.reset(new_raw);
  EXPECT_TRUE(fd_is_closed(old_raw));
  EXPECT_EQ(fd.get(), new_raw);
  EXPECT_TRUE(fd_is_open(new_raw));
  fd.reset();
  EXPECT_FALSE(fd.valid());
  EXPECT_TRUE(fd_is_closed(new_raw));
}

TEST(SysUniqueFdTest, DuplicateIsAnotherCloexecDescriptorOfTheSameFile) {
  UniqueFd fd = make_memfd(12'345);
  auto dup = fd.duplicate();
  ASSERT_TRUE(dup.ok()) << dup.error().message();
  EXPECT_NE(dup->get(), fd.get());
  EXPECT_TRUE(has_cloexec(dup->get()));
  struct stat a {};
  struct stat b {};
  ASSERT_EQ(::fstat(fd.get(), &a), 0);
  ASSERT_EQ(::fstat(dup->get(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_dev, b.st_dev);
  fd.reset();
  auto size = file_size(dup->get());
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 12'345U);
}

TEST(SysUniqueFdTest, DupOfClosedDescriptorFailsWithEbadf) {
  UniqueFd fd;
  auto dup = fd.duplicate();
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code(), ErrorCode::SystemError);
  EXPECT_EQ(dup.error().sys_errno(), EBADF);
  EXPECT_STRNE(dup.error().context(), "");
}

// ---- memfd, ftruncate, seals -------------------------------------------------

TEST(SysMemfdTest, CreatesEmptyCloexecDescriptorThatAllowsSealing) {
  auto fd = memfd_create("vipc-sys-test");
  ASSERT_TRUE(fd.ok()) << fd.error().message();
  EXPECT_TRUE(fd->valid());
  EXPECT_TRUE(has_cloexec(fd->get()));
  auto size = file_size(fd->get());
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 0U);
  auto seals = get_seals(fd->get());
  ASSERT_TRUE(seals.ok()) << seals.error().message();
  EXPECT_EQ(*seals & F_SEAL_SEAL, 0);  // without MFD_ALLOW_SEALING it would be set
}

TEST(SysMemfdTest, FtruncateSetsSizeReportedByFileSize) {
  UniqueFd fd = make_memfd(0);
  for (std::uint64_t size : {std::uint64_t{4096}, std::uint64_t{1} << 20, std::uint64_t{100}}) {
    ASSERT_TRUE(ftruncate(fd.get(), size).ok());
    auto got = file_size(fd.get());
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, size);
  }
}

TEST(SysMemfdTest, FtruncateAndFileSizeOfClosedDescriptorFailWithEbadf) {
  UniqueFd fd = make_memfd(0);
  const int raw = fd.get();
  fd.reset();
  auto t = ftruncate(raw, 4096);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code(), ErrorCode::SystemError);
  EXPECT_EQ(t.error().sys_errno(), EBADF);
  auto s = file_size(raw);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().sys_errno(), EBADF);
}

TEST(SysMemfdTest, AddedSealsAreReportedByGetSeals) {
  UniqueFd fd = make_memfd(4096);
  ASSERT_TRUE(add_seals(fd.get(), F_SEAL_SHRINK).ok());
  ASSERT_TRUE(add_seals(fd.get(), F_SEAL_GROW).ok());
  auto seals = get_seals(fd.get());
  ASSERT_TRUE(seals.ok());
  EXPECT_EQ(*seals & (F_SEAL_SHRINK | F_SEAL_GROW), F_SEAL_SHRINK | F_SEAL_GROW);
  EXPECT_EQ(*seals & F_SEAL_WRITE, 0);
}

TEST(SysMemfdTest, ShrinkSealRefusesSmallerSizeWithEperm) {
  UniqueFd fd = make_memfd(8192);
  ASSERT_TRUE(add_seals(fd.get(), F_SEAL_SHRINK).ok());
  auto r = ftruncate(fd.get(), 4096);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sys_errno(), EPERM);
  EXPECT_EQ(r.error().code(), ErrorCode::PermissionDenied);
  EXPECT_STRNE(r.error().context(), "");
  auto size = file_size(fd.get());
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 8192U);
  EXPECT_TRUE(ftruncate(fd.get(), 16384).ok());  // growing is still allowed
}

TEST(SysMemfdTest, GrowSealRefusesLargerSizeWithEperm) {
  UniqueFd fd = make_memfd(8192);
  ASSERT_TRUE(add_seals(fd.get(), F_SEAL_GROW).ok());
  auto r = ftruncate(fd.get(), 16384);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sys_errno(), EPERM);
  EXPECT_TRUE(ftruncate(fd.get(), 4096).ok());  // shrinking is still allowed
}

TEST(SysMemfdTest, SealSealRefusesFurtherSeals) {
  UniqueFd fd = make_memfd(4096);
  ASSERT_TRUE(add_seals(fd.get(), F_SEAL_SEAL).ok());
  auto r = add_seals(fd.get(), F_SEAL_SHRINK);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sys_errno(), EPERM);
  EXPECT_EQ(r.error().code(), ErrorCode::PermissionDenied);
}

TEST(SysMemfdTest, WriteSealRefusesWritableSharedMapping) {
  UniqueFd fd = make_memfd(4096);
  ASSERT_TRUE(add_seals(fd.get(), F_SEAL_WRITE).ok());
  auto w = map_shared(fd.get(), 4096, PROT_READ | PROT_WRITE);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().sys_errno(), EPERM);
  auto r = map_shared(fd.get(), 4096, PROT_READ);
  EXPECT_TRUE(r.ok()) << r.error().message();
}

TEST(SysMemfdTest, FchmodChangesPermissionBits) {
  UniqueFd fd = make_memfd(0);
  ASSERT_TRUE(fchmod(fd.get(), 0400).ok());
  struct stat st {};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777U, 0400U);
  ASSERT_TRUE(fchmod(fd.get(), 0640).ok());
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777U, 0640U);
}

// ---- map_shared, Mapping ----------------------------------------------------

TEST(SysMapTest, MappingsOfTheSameFileShareMemory) {
  UniqueFd fd = make_memfd(2 * kPage);
  auto a = map_shared(fd.get(), 2 * kPage, PROT_READ | PROT_WRITE);
  auto b = map_shared(fd.get(), 2 * kPage, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 2 * kPage);
  ASSERT_NE(a->data(), b->data());
  auto* pa = static_cast<unsigned char*>(a->data());
  auto* pb = static_cast<unsigned char*>(b->data());
  pa[0] = 0x5a;
  pa[2 * kPage - 1] = 0xa5;
  EXPECT_EQ(pb[0], 0x5a);
  EXPECT_EQ(pb[2 * kPage - 1], 0xa5);
}

TEST(SysMapTest, OffsetMapsThatPartOfTheFile) {
  UniqueFd fd = make_memfd(2 * kPage);
  auto whole = map_shared(fd.get(), 2 * kPage, PROT_READ | PROT_WRITE);
  auto second = map_shared(fd.get(), kPage, PROT_READ, kPage);
  ASSERT_TRUE(whole.ok() && second.ok());
  static_cast<unsigned char*>(whole->data())[kPage + 3] = 77;
  EXPECT_EQ(static_cast<const unsigned char*>(second->data())[3], 77);
}

TEST(SysMapTest, ZeroLengthIsInvalidArgument) {
  UniqueFd fd = make_memfd(kPage);
  auto m = map_shared(fd.get(), 0, PROT_READ);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code(), ErrorCode::InvalidArgument);
}

TEST(SysMapTest, UnalignedOffsetFailsWithEinval) {
  UniqueFd fd = make_memfd(2 * kPage);
  auto m = map_shared(fd.get(), kPage, PROT_READ, 100);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code(), ErrorCode::SystemError);
  EXPECT_EQ(m.error().sys_errno(), EINVAL);
}

TEST(SysMapTest, ReadOnlyMappingRefusesWrites) {
  UniqueFd fd = make_memfd(kPage);
  auto rw = map_shared(fd.get(), kPage, PROT_READ | PROT_WRITE);
  auto ro = map_shared(fd.get(), kPage, PROT_READ);
  ASSERT_TRUE(rw.ok() && ro.ok());
  static_cast<unsigned char*>(rw->data())[10] = 42;
  auto* target = static_cast<volatile unsigned char*>(ro->data());
  ASSERT_EQ(target[10], 42);  // reading is fine

  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    struct rlimit no_core {};
    ::setrlimit(RLIMIT_CORE, &no_core);
    ::signal(SIGSEGV, SIG_DFL);
    target[10] = 1;  // must fault
    ::_exit(0);
  }
  const int status = wait_child(pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
  EXPECT_EQ(static_cast<unsigned char*>(rw->data())[10], 42);
}

TEST(SysMapTest, DestructorUnmaps) {
  UniqueFd fd = make_memfd(kPage);
  void* addr = nullptr;
  {
    auto m = map_shared(fd.get(), kPage, PROT_READ);
    ASSERT_TRUE(m.ok());
    addr = m->data();
    EXPECT_TRUE(is_mapped(addr, kPage));
  }
  EXPECT_FALSE(is_mapped(addr, kPage));
}

TEST(SysMapTest, MoveConstructionTransfersOwnershipAndUnmapsOnce) {
  UniqueFd fd = make_memfd(kPage);
  auto m = map_shared(fd.get(), kPage, PROT_READ);
  ASSERT_TRUE(m.ok());
  std::optional<Mapping> from(std::move(*m));
  void* addr = from->data();
  {
    Mapping to(std::move(*from));
    EXPECT_FALSE(from->valid());
    EXPECT_EQ(from->size(), 0U);
    EXPECT_EQ(to.data(), addr);
    EXPECT_EQ(to.size(), kPage);
    EXPECT_TRUE(is_mapped(addr, kPage));
  }
  EXPECT_FALSE(is_mapped(addr, kPage));
  // Map something else at the same address: the moved-from object must not unmap it.
  void* again = ::mmap(addr, kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  ASSERT_EQ(again, addr);
  from.reset();
  EXPECT_TRUE(is_mapped(addr, kPage));
  ::munmap(addr, kPage);
}

TEST(SysMapTest, MoveAssignmentUnmapsPreviousAndTakesOwnership) {
  UniqueFd fd = make_memfd(kPage);
  auto a = map_shared(fd.get(), kPage, PROT_READ);
  auto b = map_shared(fd.get(), kPage, PROT_READ);
  ASSERT_TRUE(a.ok() && b.ok());
  Mapping ma = std::move(*a);
  Mapping mb = std::move(*b);
  void* addr_a = ma.data();
  void* addr_b = mb.data();
  ma = std::move(mb);
  EXPECT_FALSE(is_mapped(addr_a, kPage));
  EXPECT_EQ(ma.data(), addr_b);
  EXPECT_FALSE(mb.valid());
  EXPECT_TRUE(is_mapped(addr_b, kPage));

  Mapping& alias = ma;
  ma = std::move(alias);
  EXPECT_EQ(ma.data(), addr_b);
  EXPECT_TRUE(is_mapped(addr_b, kPage));
  ma.reset();
  EXPECT_FALSE(ma.valid());
  EXPECT_FALSE(is_mapped(addr_b, kPage));
}

// ---- reopen ------------------------------------------------------------------

TEST(SysReopenTest, ReadOnlyReopenSeesDataButCannotMapWritable) {
  UniqueFd fd = make_memfd(kPage);
  auto rw = map_shared(fd.get(), kPage, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(rw.ok());
  static_cast<unsigned char*>(rw->data())[5] = 99;

  auto ro = reopen(fd.get(), O_RDONLY);
  ASSERT_TRUE(ro.ok()) << ro.error().message();
  EXPECT_NE(ro->get(), fd.get());
  EXPECT_TRUE(has_cloexec(ro->get()));
  EXPECT_EQ(::fcntl(ro->get(), F_GETFL) & O_ACCMODE, O_RDONLY);

  auto view = map_shared(ro->get(), kPage, PROT_READ);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(static_cast<const unsigned char*>(view->data())[5], 99);

  auto writable = map_shared(ro->get(), kPage, PROT_READ | PROT_WRITE);
  ASSERT_FALSE(writable.ok());
  EXPECT_EQ(writable.error().sys_errno(), EACCES);
  EXPECT_EQ(writable.error().code(), ErrorCode::PermissionDenied);
}

TEST(SysReopenTest, ReadWriteReopenSharesTheSameFile) {
  UniqueFd fd = make_memfd(kPage);
  auto again = reopen(fd.get(), O_RDWR);
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_EQ(::fcntl(again->get(), F_GETFL) & O_ACCMODE, O_RDWR);
  auto a = map_shared(fd.get(), kPage, PROT_READ | PROT_WRITE);
  auto b = map_shared(again->get(), kPage, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(a.ok() && b.ok());
  static_cast<unsigned char*>(b->data())[0] = 123;
  EXPECT_EQ(static_cast<unsigned char*>(a->data())[0], 123);
}

TEST(SysReopenTest, ReopenOfClosedDescriptorFails) {
  UniqueFd fd = make_memfd(0);
  const int raw = fd.get();
  fd.reset();
  auto r = reopen(raw, O_RDONLY);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sys_errno(), ENOENT);
}

// ---- eventfd, poll -----------------------------------------------------------

UniqueFd make_eventfd(unsigned initval = 0, int flags = 0) {
  auto fd = eventfd(initval, flags);
  EXPECT_TRUE(fd.ok()) << fd.error().message();
  return fd.ok() ? std::move(*fd) : UniqueFd();
}

TEST(SysEventfdTest, NewEventfdIsNonBlockingCloexecAndNotReadable) {
  UniqueFd fd = make_eventfd();
  ASSERT_TRUE(fd.valid());
  EXPECT_TRUE(has_cloexec(fd.get()));
  EXPECT_NE(::fcntl(fd.get(), F_GETFL) & O_NONBLOCK, 0);
  auto readable = poll_readable(fd.get(), 0);
  ASSERT_TRUE(readable.ok());
  EXPECT_FALSE(*readable);
  auto drained = eventfd_drain(fd.get());
  ASSERT_TRUE(drained.ok());
  EXPECT_EQ(*drained, 0U);
}

TEST(SysEventfdTest, SignalMakesReadableAndDrainReturnsCountAndResets) {
  UniqueFd fd = make_eventfd();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(eventfd_signal(fd.get()).ok());
  auto readable = poll_readable(fd.get(), 0);
  ASSERT_TRUE(readable.ok());
  EXPECT_TRUE(*readable);
  auto drained = eventfd_drain(fd.get());
  ASSERT_TRUE(drained.ok());
  EXPECT_EQ(*drained, 3U);
  readable = poll_readable(fd.get(), 0);
  ASSERT_TRUE(readable.ok());
  EXPECT_FALSE(*readable);
  drained = eventfd_drain(fd.get());
  ASSERT_TRUE(drained.ok());
  EXPECT_EQ(*drained, 0U);
}

TEST(SysEventfdTest, InitialValueIsDrained) {
  UniqueFd fd = make_eventfd(5);
  auto drained = eventfd_drain(fd.get());
  ASSERT_TRUE(drained.ok());
  EXPECT_EQ(*drained, 5U);
}

TEST(SysEventfdTest, SemaphoreModeDrainsOneAtATime) {
  UniqueFd fd = make_eventfd(2, EFD_SEMAPHORE);
  for (std::uint64_t expected : {1U, 1U, 0U}) {
    auto drained = eventfd_drain(fd.get());
    ASSERT_TRUE(drained.ok());
    EXPECT_EQ(*drained, expected);
  }
}

TEST(SysEventfdTest, SignalOnSaturatedCounterSucceeds) {
  UniqueFd fd = make_eventfd();
  const std::uint64_t near_max = UINT64_MAX - 1;  // the largest value an eventfd holds
  ASSERT_EQ(::write(fd.get(), &near_max, sizeof near_max), static_cast<ssize_t>(sizeof near_max));
  EXPECT_TRUE(eventfd_signal(fd.get()).ok());
  auto drained = eventfd_drain(fd.get());
  ASSERT_TRUE(drained.ok());
  EXPECT_EQ(*drained, near_max);
}

TEST(SysEventfdTest, SignalAndDrainOfClosedDescriptorFail) {
  UniqueFd fd = make_eventfd();
  const int raw = fd.get();
  fd.reset();
  auto s = eventfd_signal(raw);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().sys_errno(), EBADF);
  auto d = eventfd_drain(raw);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().sys_errno(), EBADF);
}

TEST(SysEventfdTest, PollReadableTimesOutWithFalseAfterTheTimeout) {
  UniqueFd fd = make_eventfd();
  const auto start = steady_clock::now();
  auto readable = poll_readable(fd.get(), 30);
  const auto waited = steady_clock::now() - start;
  ASSERT_TRUE(readable.ok());
  EXPECT_FALSE(*readable);
  EXPECT_GE(waited, milliseconds(29));
}

TEST(SysEventfdTest, PollReadableWakesWhenAnotherThreadSignals) {
  UniqueFd fd = make_eventfd();
  std::thread signaller([&fd] {
    std::this_thread::sleep_for(milliseconds(20));
    (void)eventfd_signal(fd.get());
  });
  const auto start = steady_clock::now();
  auto readable = poll_readable(fd.get(), 5000);
  const auto waited = steady_clock::now() - start;
  signaller.join();
  ASSERT_TRUE(readable.ok());
  EXPECT_TRUE(*readable);
  EXPECT_LT(waited, milliseconds(4000));
}

TEST(SysPollTest, HangUpWithoutDataCountsAsReadable) {
  std::array<int, 2> p{};
  ASSERT_EQ(::pipe2(p.data(), O_CLOEXEC), 0);
  UniqueFd read_end(p[0]);
  UniqueFd write_end(p[1]);
  auto before = poll_readable(read_end.get(), 0);
  ASSERT_TRUE(before.ok());
  EXPECT_FALSE(*before);
  write_end.reset();
  auto after = poll_readable(read_end.get(), 1000);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(*after);  // a read returns end of file at once
}

TEST(SysPollTest, ClosedOrNegativeDescriptorIsAnError) {
  UniqueFd fd = make_eventfd();
  const int raw = fd.get();
  fd.reset();
  auto closed = poll_readable(raw, 1000);
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().sys_errno(), EBADF);
  auto negative = poll_readable(-1, 1000);
  ASSERT_FALSE(negative.ok());
  EXPECT_EQ(negative.error().sys_errno(), EBADF);
}

// ---- futex -------------------------------------------------------------------

TEST(SysFutexTest, WaitReturnsAtOnceWhenValueDiffers) {
  std::atomic<std::uint32_t> word{1};
  const struct timespec deadline = monotonic_in(milliseconds(3000));
  const auto start = steady_clock::now();
  auto r = futex_wait(&word, 0, &deadline);
  EXPECT_TRUE(r.ok()) << r.error().message();
  EXPECT_LT(steady_clock::now() - start, milliseconds(1000));
}

TEST(SysFutexTest, WaitAtPastDeadlineTimesOut) {
  std::atomic<std::uint32_t> word{0};
  const struct timespec past = monotonic_in(milliseconds(-1));
  auto r = futex_wait(&word, 0, &past);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::Timeout);
  EXPECT_EQ(r.error().sys_errno(), ETIMEDOUT);

  const struct timespec epoch {};
  auto r2 = futex_wait(&word, 0, &epoch);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.error().code(), ErrorCode::Timeout);
}

TEST(SysFutexTest, WaitTimesOutNotBeforeTheDeadline) {
  std::atomic<std::uint32_t> word{0};
  const auto start = steady_clock::now();
  const struct timespec deadline = monotonic_in(milliseconds(30));
  auto r = futex_wait(&word, 0, &deadline);
  const auto waited = steady_clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::Timeout);
  EXPECT_GE(waited, milliseconds(30));
}

TEST(SysFutexTest, WakeWithoutWaitersWakesNone) {
  std::atomic<std::uint32_t> word{0};
  EXPECT_EQ(futex_wake(&word, 1), 0);
  EXPECT_EQ(futex_wake(&word, INT32_MAX), 0);
}

// Calls futex_wake until it reports a woken waiter, for up to 3 s.
int wake_until_one_woken(const std::atomic<std::uint32_t>* word) {
  const auto give_up = steady_clock::now() + milliseconds(3000);
  while (steady_clock::now() < give_up) {
    const int woken = futex_wake(word, 1);
    if (woken != 0) return woken;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return 0;
}

TEST(SysFutexTest, WakeFromAnotherThreadEndsTheWait) {
  std::atomic<std::uint32_t> word{0};
  std::optional<Result<void>> result;
  std::thread waiter([&] {
    const struct timespec deadline = monotonic_in(milliseconds(5000));
    result.emplace(futex_wait(&word, 0, &deadline));
  });
  const int woken = wake_until_one_woken(&word);
  waiter.join();
  EXPECT_EQ(woken, 1);
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->ok()) << result->error().message();  // woken, not timed out
}

TEST(SysFutexTest, WakeReachesWaiterInAnotherProcess) {
  UniqueFd fd = make_memfd(kPage);
  auto m = map_shared(fd.get(), kPage, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(m.ok());
  auto* word = new (m->data()) std::atomic<std::uint32_t>(0);

  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const struct timespec deadline = monotonic_in(milliseconds(5000));
    auto r = futex_wait(word, 0, &deadline);
    ::_exit(r.ok() ? 0 : (r.error() == ErrorCode::Timeout ? 2 : 3));
  }
  const int woken = wake_until_one_woken(word);
  const int status = wait_child(pid);
  EXPECT_EQ(woken, 1);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: the waiter timed out";
}

extern "C" void ignore_signal(int /*signo*/) {}

TEST(SysFutexTest, SignalInterruptsTheWait) {
  struct sigaction action {};
  action.sa_handler = ignore_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART
  struct sigaction previous {};
  ASSERT_EQ(::sigaction(SIGUSR1, &action, &previous), 0);

  std::atomic<std::uint32_t> word{0};
  std::atomic<bool> done{false};
  std::optional<Result<void>> result;
  std::thread waiter([&] {
    const struct timespec deadline = monotonic_in(milliseconds(3000));
    result.emplace(futex_wait(&word, 0, &deadline));
    done.store(true);
  });
  // Signals keep coming until the wait returns, so one that lands before the wait
  // starts does no harm.
  const pthread_t handle = waiter.native_handle();
  while (!done.load()) {
    ::pthread_kill(handle, SIGUSR1);
    std::this_thread::sleep_for(milliseconds(5));
  }
  waiter.join();
  ::sigaction(SIGUSR1, &previous, nullptr);
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(result->ok());
  EXPECT_EQ(result->error().code(), ErrorCode::Interrupted);
  EXPECT_EQ(result->error().sys_errno(), EINTR);
}

// ---- membarrier, random, CPUs --------------------------------------------------

TEST(SysFenceTest, HeavyFenceSucceedsAfterRegistration) {
  if (!register_asymmetric_fence()) GTEST_SKIP() << "membarrier GLOBAL_EXPEDITED unavailable";
  EXPECT_TRUE(heavy_fence());
}

// True when every window of `window` consecutive bytes holds a non-zero byte.
bool no_zero_run(const std::vector<unsigned char>& buf, std::size_t window) {
  std::size_t run = 0;
  for (unsigned char c : buf) {
    run = c == 0 ? run + 1 : 0;
    if (run >= window) return false;
  }
  return true;
}

TEST(SysRandomTest, RandomBytesFillsTheWholeBuffer) {
  // A 32-byte run of zeros from a working generator has probability 2^-256.
  std::vector<unsigned char> a(1 << 20, 0);
  std::vector<unsigned char> b(1 << 20, 0);
  ASSERT_TRUE(random_bytes(a.data(), a.size()).ok());
  ASSERT_TRUE(random_bytes(b.data(), b.size()).ok());
  EXPECT_TRUE(no_zero_run(a, 32));
  EXPECT_TRUE(no_zero_run(b, 32));
  EXPECT_NE(a, b);
  EXPECT_TRUE(random_bytes(nullptr, 0).ok());
}

TEST(SysCpuTest, OnlineCpusIsWithinConfiguredCount) {
  const int n = online_cpus();
  EXPECT_GE(n, 1);
  EXPECT_LE(static_cast<long>(n), ::sysconf(_SC_NPROCESSORS_CONF));
}

TEST(SysCpuTest, PinToCpuMovesTheCallingThreadOnly) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  ASSERT_EQ(::sched_getaffinity(0, sizeof allowed, &allowed), 0);
  int target = -1;
  for (int cpu = CPU_SETSIZE - 1; cpu >= 0; --cpu) {
    if (CPU_ISSET(static_cast<unsigned>(cpu), &allowed)) {
      target = cpu;
      break;
    }
  }
  ASSERT_GE(target, 0);
  int seen_cpu = -1;
  int seen_count = 0;
  std::thread t([&] {
    if (!pin_to_cpu(target).ok()) return;
    seen_cpu = ::sched_getcpu();
    cpu_set_t now;
    CPU_ZERO(&now);
    if (::sched_getaffinity(0, sizeof now, &now) == 0) seen_count = CPU_COUNT(&now);
  });
  t.join();
  EXPECT_EQ(seen_cpu, target);
  EXPECT_EQ(seen_count, 1);
  cpu_set_t mine;
  CPU_ZERO(&mine);
  ASSERT_EQ(::sched_getaffinity(0, sizeof mine, &mine), 0);
  EXPECT_TRUE(CPU_EQUAL(&mine, &allowed));  // this thread was not pinned

  auto bad = pin_to_cpu(CPU_SETSIZE + 5);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().sys_errno(), EINVAL);
}

}  // namespace
}  // namespace vipc::sys
