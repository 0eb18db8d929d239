#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "vipc/error.hpp"
#include "vipc/message.hpp"
#include "vipc/result.hpp"

namespace vipc {
namespace {

struct NamedCode {
  ErrorCode code;
  const char* name;
};

// Every code with the name docs/errors.md gives it, in declaration order.
const std::vector<NamedCode>& all_codes() {
  static const std::vector<NamedCode> codes = {
      {ErrorCode::ChannelFull, "ChannelFull"},
      {ErrorCode::ChannelClosed, "ChannelClosed"},
      {ErrorCode::InvalidCapability, "InvalidCapability"},
      {ErrorCode::PermissionDenied, "PermissionDenied"},
      {ErrorCode::MessageTooLarge, "MessageTooLarge"},
      {ErrorCode::Timeout, "Timeout"},
      {ErrorCode::ProcessNotFound, "ProcessNotFound"},
      {ErrorCode::OutOfMemory, "OutOfMemory"},
      {ErrorCode::WouldBlock, "WouldBlock"},
      {ErrorCode::InvalidArgument, "InvalidArgument"},
      {ErrorCode::Corrupted, "Corrupted"},
      {ErrorCode::SystemError, "SystemError"},
      {ErrorCode::ProtocolError, "ProtocolError"},
      {ErrorCode::NotFound, "NotFound"},
      {ErrorCode::AlreadyExists, "AlreadyExists"},
      {ErrorCode::Unsupported, "Unsupported"},
      {ErrorCode::Interrupted, "Interrupted"},
      {ErrorCode::MessagesLost, "MessagesLost"},
      {ErrorCode::PolicyViolation, "PolicyViolation"},
      {ErrorCode::RateLimited, "RateLimited"},
  };
  return codes;
}

using Underlying = std::underlying_type_t<ErrorCode>;

TEST(ErrorTest, CodesAreNumberedContiguouslyWithSpecCodesFirst) {
  // The spec's eight IpcError values come first, in the spec's order, from 1.
  Underlying expected = 1;
  for (const NamedCode& c : all_codes()) {
    EXPECT_EQ(static_cast<Underlying>(c.code), expected) << c.name;
    ++expected;
  }
  EXPECT_EQ(static_cast<Underlying>(ErrorCode::OutOfMemory), 8);
}

TEST(ErrorTest, ToStringNamesEveryCode) {
  std::set<std::string> seen;
  for (const NamedCode& c : all_codes()) {
    const char* s = to_string(c.code);
    ASSERT_NE(s, nullptr);
    EXPECT_STREQ(s, c.name);
    seen.insert(s);
  }
  EXPECT_EQ(seen.size(), all_codes().size());
}

TEST(ErrorTest, ToStringOfAnUnknownValueIsNotAnyCodeName) {
  const auto past_last =
      static_cast<ErrorCode>(static_cast<Underlying>(all_codes().back().code) + 1);
  for (ErrorCode unknown : {static_cast<ErrorCode>(0), past_last, static_cast<ErrorCode>(0xffff)}) {
    const char* s = to_string(unknown);
    ASSERT_NE(s, nullptr);
    EXPECT_STRNE(s, "");
    for (const NamedCode& c : all_codes()) EXPECT_STRNE(s, c.name);
  }
}

TEST(ErrorTest, ErrorIsASmallTriviallyCopyableConstexprValue) {
  static_assert(std::is_trivially_copyable_v<Error>);
  static_assert(std::is_nothrow_copy_constructible_v<Error>);
  constexpr Error e(ErrorCode::Timeout, "ring: wait", 0, 7);
  static_assert(e.code() == ErrorCode::Timeout);
  static_assert(e.object() == 7);
  static_assert(e == ErrorCode::Timeout);
  static_assert(!(e == ErrorCode::ChannelFull));
  EXPECT_LE(sizeof(Error), 32U);
}

TEST(ErrorTest, AccessorsReturnWhatWasGiven) {
  static const char kContext[] = "segment: map";
  const Error e(ErrorCode::SystemError, kContext, ENOENT, 42);
  EXPECT_EQ(e.code(), ErrorCode::SystemError);
  EXPECT_EQ(e.context(), kContext);  // the static string itself, not a copy
  EXPECT_EQ(e.sys_errno(), ENOENT);
  EXPECT_EQ(e.object(), 42U);
  EXPECT_TRUE(e == ErrorCode::SystemError);
  EXPECT_FALSE(e == ErrorCode::NotFound);
}

TEST(ErrorTest, ContextIsNeverNull) {
  const Error e(ErrorCode::WouldBlock);
  ASSERT_NE(e.context(), nullptr);
  EXPECT_STREQ(e.context(), "");
  EXPECT_EQ(e.sys_errno(), 0);
  EXPECT_EQ(e.object(), 0U);
}

TEST(ErrorTest, MessageOfBareCodeIsItsName) {
  for (const NamedCode& c : all_codes()) {
    EXPECT_EQ(Error(c.code).message(), c.name);
    EXPECT_EQ(Error(c.code, "").message(), c.name);
  }
}

TEST(ErrorTest, MessageStartsWithCodeAndCarriesContextObjectAndErrnoText) {
  const Error e(ErrorCode::SystemError, "memfd_create", EMFILE, 1234567);
  const std::string m = e.message();
  EXPECT_EQ(m.rfind("SystemError", 0), 0U) << m;
  EXPECT_NE(m.find("(memfd_create)"), std::string::npos) << m;
  EXPECT_NE(m.find("1234567"), std::string::npos) << m;
  EXPECT_NE(m.find("errno " + std::to_string(EMFILE)), std::string::npos) << m;
  EXPECT_NE(m.find(std::strerror(EMFILE)), std::string::npos) << m;
}

TEST(ErrorTest, MessageOmitsPartsThatAreAbsent) {
  const std::string timeout = Error(ErrorCode::Timeout, "ring: wait for message").message();
  EXPECT_EQ(timeout.find("errno"), std::string::npos) << timeout;
  EXPECT_NE(timeout.find("ring: wait for message"), std::string::npos) << timeout;

  const std::string sys = Error(ErrorCode::SystemError, nullptr, EBADF).message();
  EXPECT_EQ(sys.find("()"), std::string::npos) << sys;
  EXPECT_NE(sys.find(std::strerror(EBADF)), std::string::npos) << sys;
}

TEST(ErrorTest, MessageDiffersByErrno) {
  const std::string a = Error(ErrorCode::SystemError, "x", EACCES).message();
  const std::string b = Error(ErrorCode::SystemError, "x", ENOSPC).message();
  EXPECT_NE(a, b);
  EXPECT_NE(a.find(std::strerror(EACCES)), std::string::npos) << a;
  EXPECT_NE(b.find(std::strerror(ENOSPC)), std::string::npos) << b;
}

TEST(ResultTest, HoldsValue) {
  Result<int> r = 42;
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(static_cast<bool>(r));
  EXPECT_EQ(r.value(), 42);
  EXPECT_EQ(*r, 42);
  *r = 43;
  EXPECT_EQ(r.value(), 43);
}

TEST(ResultTest, HoldsError) {
  Result<int> r = Error(ErrorCode::NotFound, "registry: lookup", 0, 9);
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(static_cast<bool>(r));
  EXPECT_EQ(r.error().code(), ErrorCode::NotFound);
  EXPECT_STREQ(r.error().context(), "registry: lookup");
  EXPECT_EQ(r.error().object(), 9U);
}

TEST(ResultTest, ArrowReachesMembersOfTheValue) {
  Result<std::string> r = std::string("hello");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 5U);
  r->append(" world");
  EXPECT_EQ(*r, "hello world");
  const Result<std::string>& cr = r;
  EXPECT_EQ(cr->size(), 11U);
  EXPECT_EQ(cr.value(), "hello world");
}

TEST(ResultTest, InPlaceBuildsTheValueFromItsArguments) {
  Result<std::string> r(std::in_place, std::size_t{3}, 'x');
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "xxx");
  Result<SmallMessage> m(std::in_place);  // value-initialised: every byte zero
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->type, 0u);
  EXPECT_EQ(m->length, 0u);
  EXPECT_EQ(m->cap_count, 0u);
  for (std::byte b : m->data) EXPECT_EQ(b, std::byte{0});
}

// A value that counts its destructions and can be neither moved nor assigned: set_error()
// must destroy it in place, once, and leave the error behind.
struct Pinned {
  explicit Pinned(int* destroyed) noexcept : destroyed_(destroyed) {}
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  ~Pinned() { ++*destroyed_; }
  int* destroyed_;
};

TEST(ResultTest, SetErrorReplacesAValueBuiltInPlace) {
  int destroyed = 0;
  {
    Result<Pinned> r(std::in_place, &destroyed);
    ASSERT_TRUE(r.ok());
    r.set_error(Error(ErrorCode::Timeout, "wait", 0, 42));
    EXPECT_EQ(destroyed, 1);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), ErrorCode::Timeout);
    EXPECT_STREQ(r.error().context(), "wait");
    EXPECT_EQ(r.error().object(), 42u);
    r.set_error(Error(ErrorCode::ChannelClosed));  // an error replaces an error
    EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed);
  }
  EXPECT_EQ(destroyed, 1);  // not destroyed again with the Result
}

TEST(ResultTest, ValueOrReturnsValueOrFallback) {
  const Result<int> good = 5;
  const Result<int> bad = Error(ErrorCode::Timeout);
  EXPECT_EQ(good.value_or(-1), 5);
  EXPECT_EQ(bad.value_or(-1), -1);

  const Result<std::string> name = std::string("ring");
  const Result<std::string> missing = Error(ErrorCode::NotFound);
  EXPECT_EQ(name.value_or("none"), "ring");
  EXPECT_EQ(missing.value_or("none"), "none");
  EXPECT_EQ(*name, "ring");  // value_or copies, it does not move out
}

TEST(ResultTest, VoidResultIsSuccessByDefaultAndCarriesErrors) {
  const Result<void> good;
  EXPECT_TRUE(good.ok());
  EXPECT_TRUE(static_cast<bool>(good));
  good.value();  // no effect on success

  const Result<void> bad = Error(ErrorCode::PermissionDenied, "fchmod", EPERM);
  EXPECT_FALSE(bad.ok());
  EXPECT_FALSE(static_cast<bool>(bad));
  EXPECT_EQ(bad.error().code(), ErrorCode::PermissionDenied);
  EXPECT_EQ(bad.error().sys_errno(), EPERM);
  EXPECT_STREQ(bad.error().context(), "fchmod");
}

TEST(ResultTest, MoveOnlyValueCanBeMovedOut) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(**r, 7);
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 7);

  Result<std::unique_ptr<int>> r2 = std::make_unique<int>(8);
  std::unique_ptr<int> q = *std::move(r2);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(*q, 8);
}

Result<std::unique_ptr<int>> make_box(bool fail) {
  if (fail) return Error(ErrorCode::OutOfMemory, "make_box");
  return std::make_unique<int>(11);
}

TEST(ResultTest, MoveOnlyResultReturnsFromFunctionsAndMovesAsAWhole) {
  Result<std::unique_ptr<int>> ok = make_box(false);
  ASSERT_TRUE(ok.ok());
  Result<std::unique_ptr<int>> moved = std::move(ok);
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(**moved, 11);

  Result<std::unique_ptr<int>> failed = make_box(true);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().code(), ErrorCode::OutOfMemory);
  static_assert(!std::is_copy_constructible_v<Result<std::unique_ptr<int>>>);
  static_assert(std::is_nothrow_move_constructible_v<Result<std::unique_ptr<int>>>);
}

// Fallible steps for VIPC_TRY that count how often they ran.
struct Steps {
  int calls = 0;
  int reached_end = 0;
  Result<void> step_void(bool fail) {
    ++calls;
    if (fail) return Error(ErrorCode::ChannelClosed, "step_void", 0, 1);
    return {};
  }
  Result<int> step_int(bool fail) {
    ++calls;
    if (fail) return Error(ErrorCode::Corrupted, "step_int", 0, 2);
    return 5;
  }
  Result<int> run(bool fail_void, bool fail_int) {
    VIPC_TRY(step_void(fail_void));
    VIPC_TRY(step_int(fail_int));
    ++reached_end;
    return 100;
  }
  Result<void> run_void(bool fail_int) {
    VIPC_TRY(step_int(fail_int));
    ++reached_end;
    return {};
  }
};

TEST(ResultTest, TryContinuesOnSuccess) {
  Steps s;
  Result<int> r = s.run(false, false);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 100);
  EXPECT_EQ(s.calls, 2);
  EXPECT_EQ(s.reached_end, 1);
}

TEST(ResultTest, TryReturnsFirstErrorAndSkipsTheRest) {
  Steps s;
  Result<int> r = s.run(true, false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::ChannelClosed);
  EXPECT_STREQ(r.error().context(), "step_void");
  EXPECT_EQ(r.error().object(), 1U);
  EXPECT_EQ(s.calls, 1);  // evaluated once, later steps not run
  EXPECT_EQ(s.reached_end, 0);

  Steps t;
  Result<int> r2 = t.run(false, true);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.error().code(), ErrorCode::Corrupted);
  EXPECT_EQ(r2.error().object(), 2U);
  EXPECT_EQ(t.calls, 2);
  EXPECT_EQ(t.reached_end, 0);
}

TEST(ResultTest, TryPropagatesFromValueResultIntoVoidResult) {
  Steps s;
  Result<void> r = s.run_void(true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::Corrupted);
  EXPECT_EQ(s.reached_end, 0);
  EXPECT_TRUE(s.run_void(false).ok());
  EXPECT_EQ(s.reached_end, 1);
}

TEST(ResultTest, TryWorksAsASingleStatementInIfElse) {
  Steps s;
  auto f = [&s](bool which) -> Result<int> {
    if (which)
      VIPC_TRY(s.step_void(true));
    else
      VIPC_TRY(s.step_int(true));
    return 0;
  };
  EXPECT_EQ(f(true).error().code(), ErrorCode::ChannelClosed);
  EXPECT_EQ(f(false).error().code(), ErrorCode::Corrupted);
}

using ResultDeathTest = ::testing::Test;

TEST_F(ResultDeathTest, ValueOnAnErrorTerminates) {
  const Result<int> r = Error(ErrorCode::Timeout);
  EXPECT_DEATH((void)r.value(), "value\\(\\) on an error");
}

TEST_F(ResultDeathTest, ErrorOnAValueTerminates) {
  const Result<int> r = 3;
  EXPECT_DEATH((void)r.error(), "error\\(\\) on a value");
}

TEST_F(ResultDeathTest, VoidValueOnAnErrorTerminates) {
  const Result<void> r = Error(ErrorCode::Timeout);
  EXPECT_DEATH(r.value(), "on an error");
}

TEST_F(ResultDeathTest, VoidErrorOnSuccessTerminates) {
  const Result<void> r;
  EXPECT_DEATH((void)r.error(), "error\\(\\) on success");
}

}  // namespace
}  // namespace vipc
