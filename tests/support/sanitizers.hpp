// Whether this test binary runs under a sanitizer (ASan, UBSan with ASan, or TSan), so
// that tests can scale their message counts down while keeping every assertion.
#pragma once

namespace vipc::test {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || defined(VIPC_TSAN)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

}  // namespace vipc::test
