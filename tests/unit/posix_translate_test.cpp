// posix translation layer: names and errno mapping.
#include "posix/translate.hpp"

#include <gtest/gtest.h>
#include <limits.h>

#include <cerrno>
#include <string>

namespace vipc::posix {
namespace {

TEST(PosixTranslate, QueueNamesFollowLinux) {
  std::string_view out;
  EXPECT_EQ(queue_name("/q", &out), 0);
  EXPECT_EQ(out, "q");
  EXPECT_EQ(queue_name("q", &out), EINVAL);
  EXPECT_EQ(queue_name(nullptr, &out), EINVAL);
  EXPECT_EQ(queue_name("/", &out), ENOENT);
  EXPECT_EQ(queue_name("/a/b", &out), EACCES);
  EXPECT_EQ(queue_name("/.", &out), EACCES);
  EXPECT_EQ(queue_name("/..", &out), EACCES);
  const std::string max = "/" + std::string(255, 'n');
  EXPECT_EQ(queue_name(max.c_str(), &out), 0);
  EXPECT_EQ(out.size(), 255u);
  const std::string over = "/" + std::string(256, 'n');
  EXPECT_EQ(queue_name(over.c_str(), &out), ENAMETOOLONG);
  const std::string path = "/" + std::string(PATH_MAX + 10, 'n');
  EXPECT_EQ(queue_name(path.c_str(), &out), ENAMETOOLONG);
}

TEST(PosixTranslate, ErrorsMapToTheirErrno) {
  EXPECT_EQ(to_errno(Error(ErrorCode::ChannelFull)), EAGAIN);
  EXPECT_EQ(to_errno(Error(ErrorCode::WouldBlock)), EAGAIN);
  EXPECT_EQ(to_errno(Error(ErrorCode::Timeout)), ETIMEDOUT);
  EXPECT_EQ(to_errno(Error(ErrorCode::Interrupted)), EINTR);
  EXPECT_EQ(to_errno(Error(ErrorCode::MessageTooLarge)), EMSGSIZE);
  EXPECT_EQ(to_errno(Error(ErrorCode::InvalidArgument)), EINVAL);
  EXPECT_EQ(to_errno(Error(ErrorCode::AlreadyExists)), EBUSY);
  EXPECT_EQ(to_errno(Error(ErrorCode::SystemError, "x", ENFILE)), ENFILE);
}

TEST(PosixTranslate, NotifyRejectsABadSigevent) {
  auto fd = core::MessageQueue::create_segment({2, 8}, 1);
  ASSERT_TRUE(fd.ok());
  auto q = core::MessageQueue::attach(fd->get());
  ASSERT_TRUE(q.ok());
  struct sigevent ev {};
  ev.sigev_notify = 12345;
  EXPECT_EQ(notify(fd->get(), *q, &ev), EINVAL);
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = 65;
  EXPECT_EQ(notify(fd->get(), *q, &ev), EINVAL);
  ev.sigev_notify = SIGEV_NONE;
  EXPECT_EQ(notify(fd->get(), *q, &ev), 0);
  EXPECT_EQ(notify(fd->get(), *q, &ev), EBUSY);
  EXPECT_EQ(notify(fd->get(), *q, nullptr), 0);
  EXPECT_EQ(notify(fd->get(), *q, &ev), 0);
}

}  // namespace
}  // namespace vipc::posix
