// ObjectTable: the client's table of resolved objects, name -> ResolvedObject, read without
// locks by every thread that names an object (docs/registry.md).
//
// Guarantees
// - find() and lookup() take no lock, make no system call and never allocate: they hash
//   the name, probe a fixed array of slots and copy 32 bytes out.
// - A value returned for a name is one that insert() or update() wrote for that name,
//   whole: never a mix of two writes and never another name's value
//   (tests/stress/object_table_stress.cpp, ReadersSeeOnlyWrittenValues).
// - Readers are lock-free: a reader retries a slot only when a writer *completed* an
//   update of that slot during the read. A writer stopped halfway (preempted, or blocked
//   in a page fault) never delays a reader, because it writes the copy readers are not
//   using (each slot keeps two copies of its tag and value, selected by the parity of
//   its version: a per-slot "latch" seqlock).
// - Linearizable: a name present during a whole find() is found; a name absent during
//   a whole find() is not. Names never move once inserted (no rehash, no shifting), and
//   an erased name leaves a tombstone, so a probe never stops short of a present name
//   (tests/unit/object_table_test.cpp, TombstonesKeepProbeChains).
// - Writers (insert, update, erase) serialize on a mutex; they are rare (each follows a
//   broker round trip) and O(probe length).
// - Fast: a name of 8..32 characters is hashed and compared as four 8-byte words in
//   straight-line code (two multiplies, no length-dependent branch). `vipc bench
//   lookup`: p50 10.4 ns per lookup with 64 names (0.33x a std::unordered_map in the
//   same run), 15.5 ns with 1000 names (0.41x), on the 2-vCPU test machine
//   (docs/benchmarks.md).
//
// Caveats
// - Fixed size: create(max_names) allocates bit_ceil(2 * max_names) slots (at least 2),
//   so at most half of the slots hold live names; insert() returns OutOfMemory once
//   size() == max_names (FullTableRefusesInsert). The table never grows or rehashes:
//   moving a name would let a concurrent reader miss it.
// - Erased names leave tombstones so that probes continue past them. insert() reuses
//   the first tombstone on its probe path, and a tombstone whose next slot is empty is
//   turned back into an empty slot at once (cascading backwards), so tombstones remain
//   only inside runs of occupied slots (TrailingTombstonesAreCleared). Under heavy churn
//   a lookup of an absent name may probe longer; it never probes more than every slot.
// - Reader retries are bounded only by the writers' progress (lock-free, not wait-free):
//   a writer that updates one slot in a tight loop can make a reader of that slot retry.
// - Names follow the wire protocol: 1..63 characters 0x21..0x7e (wire::valid_name).
//   insert/update/erase refuse anything else with InvalidArgument; find() simply does not
//   find it; lookup() says InvalidArgument.
// - The hash is fast, not keyed: the names are this process's own, so hash flooding is
//   not a concern here.
// - Not movable while other threads use it (moving is for handing the result of
//   create() over); a moved-from table finds nothing and refuses writes.
// - Little-endian targets only (static_assert): names are compared as 64-bit words.
//
// Memory ordering (docs/registry.md, steps OT1-OT5; every atomic below names its step)
// - Every field a reader reads is a std::atomic, read with relaxed loads between an
//   acquire load of the slot's version (OT4) and an acquire fence plus a relaxed reload
//   of the version (OT5); the read counts only if the version did not change.
// - The writer, for every update of a slot: a release fence (OT1), relaxed stores into
//   the copy selected by the *next* version's parity, and the name words when the slot
//   is free (OT2), then a release store of version + 1 (OT3).
// - OT3/OT4: a reader that sees version v sees every store of the update that made v.
//   OT1/OT5: a reader that read any store of a later update sees a version > v on its
//   reload (the fences synchronize), so it retries. Copy v & 1 is written only by the
//   update after v + 1 was published, and the name words only while the slot is free
//   in the published copy, so an unchanged version means a consistent read.
//
//   auto table = ObjectTable::create(256).value();
//   (void)table.insert("camera/front", {.id = 7, .kind = 1, .capacity = 1024});
//   if (auto obj = table.find("camera/front")) use(obj->id);   // any thread, no lock
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>

#include "vipc/result.hpp"

namespace vipc::client {

// What the client keeps about an object it resolved through the broker. The table
// treats it as 32 opaque bytes; `handle` is the caller's (an index, a pointer value).
struct ResolvedObject {
  std::uint64_t id = 0;  // the broker's object id
  std::uint32_t kind = 0;
  std::uint32_t capacity = 0;
  std::uint32_t max_message_size = 0;
  std::uint32_t flags = 0;
  std::uint64_t handle = 0;

  friend bool operator==(const ResolvedObject&, const ResolvedObject&) = default;
};
static_assert(sizeof(ResolvedObject) == 32);
static_assert(std::is_trivially_copyable_v<ResolvedObject>);
static_assert(std::has_unique_object_representations_v<ResolvedObject>);  // no padding

namespace object_table_detail {

static_assert(std::endian::native == std::endian::little, "names are compared as LE words");

inline constexpr std::size_t kNameMax = 63;   // characters (wire::kNameMax)
inline constexpr std::size_t kNameWords = 8;  // words that cover a name (see Key)
inline constexpr std::size_t kValueWords = sizeof(ResolvedObject) / 8;

// Tags: 0 and 1 mark free slots; a live slot's tag has bit 63 set, the name's length in
// bits 0-5 and bits 6-62 of its hash, so a tag match means "same length, probably same
// name" and only then are the name words compared.
inline constexpr std::uint64_t kEmpty = 0;
inline constexpr std::uint64_t kTombstone = 1;
inline constexpr std::uint64_t kLiveBit = std::uint64_t{1} << 63;
inline constexpr std::uint64_t kLengthBits = 0x3f;

// One slot, two copies of (tag, value) selected by version & 1; 192 bytes, 3 cache lines.
//
//  0        8        16       24                     56                     88
//  +--------+--------+--------+----------------------+----------------------+
//  | version| tag[0] | tag[1] | value[0] (32 bytes)  | value[1] (32 bytes)  |
//  +--------+--------+--------+----------------------+----------------------+
//  88                                                 152                 192
//  +--------------------------------------------------+-------------------+
//  | name: 8 words (Key::words; written while free)   | (padding)         |
//  +--------------------------------------------------+-------------------+
//
// Process-local (heap), never shared memory: nothing here is read from another process.
struct alignas(64) Slot {
  std::atomic<std::uint64_t> version{0};  // even or odd: which copy is published
  std::array<std::atomic<std::uint64_t>, 2> tag{};
  std::array<std::array<std::atomic<std::uint64_t>, kValueWords>, 2> value{};
  std::array<std::atomic<std::uint64_t>, kNameWords> name{};
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint64_t>) == 8);
static_assert(std::is_standard_layout_v<Slot>);
static_assert(sizeof(Slot) == 192);
static_assert(alignof(Slot) == 64);
static_assert(offsetof(Slot, version) == 0);
static_assert(offsetof(Slot, tag) == 8);
static_assert(offsetof(Slot, value) == 24);
static_assert(offsetof(Slot, name) == 88);

// A name as the table sees it: words that cover its bytes, its hash and its tag. The
// words are a function of the name's bytes and length that two names of the same
// length share only if they are equal (every byte lies in some word, at a position
// fixed by the length), loaded with overlapping 8-byte loads that never read outside
// the name (n = length):
//   n 1..7     word 0: the bytes, zero padded; words 1..3: 0
//   n 8..32    words 0..3: bytes [0, 8), [n-8, n), [o, o+8), [n-8-o, n-o) where o is 8
//              when n > 16, else 0 (words 2, 3 then repeat words 0, 1)
//   n 33..63   words 0..3 as for 8..32; words 4..7: bytes [16+8j, 24+8j) clamped to
//              [n-8, n) (j = 0..3), which with words 0..3 cover [0, n)
// Names of 8..32 bytes are the fast path (make_short_key: no branch); only names of 33
// bytes or more use words 4..7 (tests/unit/object_table_test.cpp, EveryByteIsCompared).
inline constexpr std::size_t kShortWords = 4;
inline constexpr std::size_t kShortMin = 8;
inline constexpr std::size_t kShortMax = 8 * kShortWords;

struct Key {
  std::array<std::uint64_t, kNameWords> words;  // 4..7 set only when length > kShortMax
  std::size_t length;
  std::uint64_t hash;
  std::uint64_t tag;
};

inline std::uint64_t load_u64(const char* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline std::uint64_t load_u32(const char* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline std::uint64_t load_u16(const char* p) noexcept {
  std::uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The n (1..7) bytes at p as a zero-padded little-endian word, reading only [p, p + n):
// two overlapping loads whose overlap holds the same bytes at the same positions.
inline std::uint64_t load_short(const char* p, std::size_t n) noexcept {
  if (n >= 4) return load_u32(p) | (load_u32(p + n - 4) << (8 * (n - 4)));
  if (n >= 2) return load_u16(p) | (load_u16(p + n - 2) << (8 * (n - 2)));
  return static_cast<unsigned char>(p[0]);
}

__extension__ using U128 = unsigned __int128;  // GCC and Clang; -Wpedantic-clean

// 64x64 -> 128-bit multiply folded to 64 bits (the mixing step of wyhash).
inline std::uint64_t mum(std::uint64_t a, std::uint64_t b) noexcept {
  const U128 r = static_cast<U128>(a) * b;
  return static_cast<std::uint64_t>(r) ^ static_cast<std::uint64_t>(r >> 64);
}

inline constexpr std::array<std::uint64_t, kNameWords> kWordSecret = {
    0xa0761d6478bd642fULL, 0xe7037ed1a0b428dbULL, 0x8ebc6af09c88c6e3ULL, 0x589965cc75374cc3ULL,
    0x1d8e4e27c47d124fULL, 0x9e3779b97f4a7c15ULL, 0xbf58476d1ce4e5b9ULL, 0x94d049bb133111ebULL};
inline constexpr std::uint64_t kLengthMix = 0xcb2c0f5d8b4b3e2bULL;

// The hash and tag of a key whose words are set: two independent multiplies (four for
// a long name) of word pairs, summed with the length.
[[gnu::always_inline]] inline void finish_key(Key& k, std::uint64_t hash_mask) noexcept {
  std::uint64_t h = k.length * kLengthMix;
  h += mum(k.words[0] ^ kWordSecret[0], k.words[1] ^ kWordSecret[1]);
  h += mum(k.words[2] ^ kWordSecret[2], k.words[3] ^ kWordSecret[3]);
  if (k.length > kShortMax) [[unlikely]] {
    h += mum(k.words[4] ^ kWordSecret[4], k.words[5] ^ kWordSecret[5]);
    h += mum(k.words[6] ^ kWordSecret[6], k.words[7] ^ kWordSecret[7]);
  }
  h &= hash_mask;
  k.hash = h;
  k.tag = kLiveBit | (h & ~kLengthBits) | k.length;
}

// Requires kShortMin <= name.size() <= kShortMax: four loads at offsets computed without
// a branch, two multiplies.
[[gnu::always_inline]] inline Key make_short_key(std::string_view name,
                                                 std::uint64_t hash_mask) noexcept {
  Key k;
  const char* p = name.data();
  const std::size_t n = name.size();
  const std::size_t o = std::size_t{8} & (std::size_t{0} - static_cast<std::size_t>(n > 16));
  k.length = n;
  k.words[0] = load_u64(p);
  k.words[1] = load_u64(p + n - 8);
  k.words[2] = load_u64(p + o);
  k.words[3] = load_u64(p + n - 8 - o);
  finish_key(k, hash_mask);
  return k;
}

// Any name of 1..kNameMax bytes.
inline Key make_key(std::string_view name, std::uint64_t hash_mask) noexcept {
  const char* p = name.data();
  const std::size_t n = name.size();
  if (n >= kShortMin && n <= kShortMax) return make_short_key(name, hash_mask);
  Key k;
  k.length = n;
  if (n < kShortMin) {
    k.words = {};
    k.words[0] = load_short(p, n);
  } else {
    k.words[0] = load_u64(p);
    k.words[1] = load_u64(p + n - 8);
    k.words[2] = load_u64(p + 8);
    k.words[3] = load_u64(p + n - 16);
    for (std::size_t j = 0; j < 4; ++j) {
      const std::size_t at = 16 + 8 * j;
      k.words[kShortWords + j] = load_u64(p + (at < n - 8 ? at : n - 8));
    }
  }
  finish_key(k, hash_mask);
  return k;
}

// Compares the key with the slot's name words (relaxed: OT5 validates the read). Called
// after a tag match, so both names have the key's length and the same word layout;
// kLong: the key is longer than kShortMax.
template <bool kLong>
[[gnu::always_inline]] inline bool name_equals(const Slot& s, const Key& k) noexcept {
  constexpr auto kRelaxed = std::memory_order_relaxed;
  std::uint64_t diff =
      (s.name[0].load(kRelaxed) ^ k.words[0]) | (s.name[1].load(kRelaxed) ^ k.words[1]) |
      (s.name[2].load(kRelaxed) ^ k.words[2]) | (s.name[3].load(kRelaxed) ^ k.words[3]);
  if constexpr (kLong) {
    for (std::size_t i = kShortWords; i < kNameWords; ++i) {
      diff |= s.name[i].load(kRelaxed) ^ k.words[i];
    }
  }
  return diff == 0;
}

}  // namespace object_table_detail

class ObjectTable {
 public:
  // Largest max_names accepted by create() (a table of 2^17 slots, 24 MiB).
  static constexpr std::size_t kMaxNames = std::size_t{1} << 16;
  static constexpr std::size_t kNameMax = object_table_detail::kNameMax;

  // A table for up to max_names names. InvalidArgument unless 1 <= max_names <=
  // kMaxNames; OutOfMemory when the slots cannot be allocated.
  [[nodiscard]] static Result<ObjectTable> create(std::size_t max_names);
  // For tests: keeps only the bits of each name's hash selected by hash_mask, so that
  // hash_mask 0 puts every name on the same probe chain with the same tag bits.
  [[nodiscard]] static Result<ObjectTable> create_with_hash_mask(std::size_t max_names,
                                                                 std::uint64_t hash_mask);

  ObjectTable(ObjectTable&& other) noexcept;
  ObjectTable& operator=(ObjectTable&& other) noexcept;
  ObjectTable(const ObjectTable&) = delete;
  ObjectTable& operator=(const ObjectTable&) = delete;
  ~ObjectTable();

  // The value stored for `name`, or nothing (absent, or not a valid name). Any thread,
  // concurrently with writers; lock-free, no syscall, no allocation.
  [[nodiscard]] [[gnu::always_inline]] std::optional<ResolvedObject> find(
      std::string_view name) const noexcept {
    namespace d = object_table_detail;
    if (name.size() - d::kShortMin <= d::kShortMax - d::kShortMin) [[likely]] {
      return probe<false>(d::make_short_key(name, hash_mask_));
    }
    return find_other(name);
  }
  // find() with the reason of a miss: NotFound, or InvalidArgument for a name that is
  // not 1..63 characters 0x21..0x7e (checked only on a miss: a stored name is valid).
  [[nodiscard]] [[gnu::always_inline]] Result<ResolvedObject> lookup(
      std::string_view name) const noexcept {
    if (auto v = find(name)) return *v;
    return miss_error(name);
  }

  // Adds `name`. InvalidArgument (bad name), AlreadyExists (present: use update()),
  // OutOfMemory (size() == max_names).
  [[nodiscard]] Result<void> insert(std::string_view name, const ResolvedObject& value);
  // Replaces the value of a present name. InvalidArgument, NotFound.
  [[nodiscard]] Result<void> update(std::string_view name, const ResolvedObject& value);
  // Removes `name` (its slot becomes a tombstone, or empty at the end of a run).
  // InvalidArgument, NotFound.
  [[nodiscard]] Result<void> erase(std::string_view name);

  // Live names and tombstones, exact (taken under the writers' mutex).
  [[nodiscard]] std::size_t size() const;
  [[nodiscard]] std::size_t tombstones() const;
  [[nodiscard]] std::size_t max_names() const noexcept { return max_names_; }
  [[nodiscard]] std::size_t slot_count() const noexcept { return slot_count_; }

 private:
  struct Writer;  // the mutex and the counts

  ObjectTable() = default;
  [[nodiscard]] static Error miss_error(std::string_view name) noexcept;
  // find() for names outside 8..32 bytes (out of line: rare, and keeps find() small).
  [[nodiscard]] std::optional<ResolvedObject> find_other(std::string_view name) const noexcept;

  // Walks the probe chain of `key`. Only a hit and an empty slot end the walk, so only
  // they are validated (OT5); a slot whose tag is another name's or a tombstone is
  // skipped on a single atomic load: a name present for the whole lookup keeps its tag
  // in both copies of its slot, and its chain holds no empty slot (docs/registry.md,
  // "Why a lookup is linearizable").
  template <bool kLong>
  [[nodiscard]] [[gnu::always_inline]] std::optional<ResolvedObject> probe(
      const object_table_detail::Key& key) const noexcept {
    namespace d = object_table_detail;
    std::size_t i = key.hash & slot_mask_;
    for (std::size_t n = 0; n < slot_count_;) {
      const d::Slot& s = slots_[i];
      // OT4: pairs with OT3 of the update that published v: its stores are visible.
      const std::uint64_t v = s.version.load(std::memory_order_acquire);
      const std::size_t c = v & 1;
      const std::uint64_t tag = s.tag[c].load(std::memory_order_relaxed);
      if (tag == key.tag && d::name_equals<kLong>(s, key)) {
        const std::array<std::uint64_t, d::kValueWords> w = {
            s.value[c][0].load(std::memory_order_relaxed),
            s.value[c][1].load(std::memory_order_relaxed),
            s.value[c][2].load(std::memory_order_relaxed),
            s.value[c][3].load(std::memory_order_relaxed)};
        // OT5: pairs with OT1 of any later update whose stores the loads above saw; the
        // reload then sees a newer version, and the slot is read again.
        std::atomic_thread_fence(std::memory_order_acquire);
        if (s.version.load(std::memory_order_relaxed) == v) return std::bit_cast<ResolvedObject>(w);
        continue;
      }
      if (tag == d::kEmpty) {
        std::atomic_thread_fence(std::memory_order_acquire);  // OT5, as above
        if (s.version.load(std::memory_order_relaxed) == v) return std::nullopt;
        continue;
      }
      ++n;
      i = (i + 1) & slot_mask_;
    }
    return std::nullopt;
  }

  std::unique_ptr<object_table_detail::Slot[]> slots_;
  std::size_t slot_count_ = 0;  // a power of two; 0 in a moved-from table
  std::size_t slot_mask_ = 0;
  std::size_t max_names_ = 0;
  std::uint64_t hash_mask_ = ~std::uint64_t{0};
  std::unique_ptr<Writer> writer_;
};

}  // namespace vipc::client
