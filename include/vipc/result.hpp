// vipc::Result<T>: a value or a vipc::Error, returned by every fallible call at the
// library boundary (no exceptions cross it).
//
// Guarantees: holds exactly one of T or Error; never allocates by itself; accessing
// the wrong alternative is a programming error caught by an assertion in debug
// builds and terminates in release builds (never undefined behaviour).
//
//   vipc::Result<int> r = parse(x);
//   if (!r) return r.error();
//   use(*r);
#pragma once

#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <variant>

#include "vipc/error.hpp"

namespace vipc {

namespace detail {
[[noreturn]] inline void bad_result_access(const char* what) noexcept {
  std::fprintf(stderr, "vipc: %s\n", what);
  std::abort();
}
}  // namespace detail

template <class T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::remove_cv_t<T>, Error>, "Result<Error> is ambiguous");

 public:
  using value_type = T;

  // NOLINTNEXTLINE(google-explicit-constructor): implicit so `return value;` reads naturally.
  Result(T value) noexcept(std::is_nothrow_move_constructible_v<T>) : v_(std::move(value)) {}
  // NOLINTNEXTLINE(google-explicit-constructor): implicit so `return error;` reads naturally.
  Result(Error error) noexcept : v_(error) {}
  // The value built in place (no temporary to move from).
  template <class... Args>
  explicit Result(std::in_place_t,
                  Args&&... args) noexcept(std::is_nothrow_constructible_v<T, Args...>)
      : v_(std::in_place_index<0>, std::forward<Args>(args)...) {}

  [[nodiscard]] bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  [[nodiscard]] T& value() & noexcept { return *get(); }
  [[nodiscard]] const T& value() const& noexcept { return *get(); }
  [[nodiscard]] T&& value() && noexcept { return std::move(*get()); }
  T& operator*() & noexcept { return *get(); }
  const T& operator*() const& noexcept { return *get(); }
  T&& operator*() && noexcept { return std::move(*get()); }
  T* operator->() noexcept { return get(); }
  const T* operator->() const noexcept { return get(); }

  template <class U>
  [[nodiscard]] T value_or(U&& fallback) const& {
    return ok() ? *get() : static_cast<T>(std::forward<U>(fallback));
  }

  [[nodiscard]] const Error& error() const noexcept {
    const Error* e = std::get_if<1>(&v_);
    if (e == nullptr) detail::bad_result_access("Result::error() on a value");
    return *e;
  }
  // Replaces the value (or error) with `error`. For a function that builds its value in
  // place and returns that one object on every path, so that nothing is moved out.
  void set_error(Error error) noexcept { v_.template emplace<1>(error); }

 private:
  T* get() noexcept {
    T* p = std::get_if<0>(&v_);
    if (p == nullptr) detail::bad_result_access("Result::value() on an error");
    return p;
  }
  const T* get() const noexcept {
    const T* p = std::get_if<0>(&v_);
    if (p == nullptr) detail::bad_result_access("Result::value() on an error");
    return p;
  }

  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() noexcept = default;
  // NOLINTNEXTLINE(google-explicit-constructor): implicit so `return error;` reads naturally.
  Result(Error error) noexcept : has_error_(true), error_(error) {}

  [[nodiscard]] bool ok() const noexcept { return !has_error_; }
  explicit operator bool() const noexcept { return ok(); }
  void value() const noexcept {
    if (has_error_) detail::bad_result_access("Result<void>::value() on an error");
  }
  [[nodiscard]] const Error& error() const noexcept {
    if (!has_error_) detail::bad_result_access("Result<void>::error() on success");
    return error_;
  }

 private:
  bool has_error_ = false;
  Error error_{ErrorCode::SystemError};
};

}  // namespace vipc

// Evaluates a Result-returning expression; returns its error from the enclosing
// function when it failed.
#define VIPC_TRY(expr)                                  \
  do {                                                  \
    if (auto vipc_try_r_ = (expr); !vipc_try_r_.ok()) { \
      return vipc_try_r_.error();                       \
    }                                                   \
  } while (0)
