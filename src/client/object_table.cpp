// ObjectTable's writers: insert, update and erase under one mutex, each publishing a slot
// with the latch protocol of docs/registry.md (OT1-OT3). Readers are in the header.
#include "client/object_table.hpp"

#include <bit>
#include <mutex>
#include <new>
#include <utility>

#include "core/wire.hpp"

namespace vipc::client {

namespace d = object_table_detail;

static_assert(d::kNameMax == wire::kNameMax, "the table holds the wire protocol's names");
static_assert(d::kNameMax <= d::kLengthBits, "the length must fit the tag's length bits");
static_assert(d::kNameWords * 8 >= d::kNameMax, "the name words can cover every name");

struct ObjectTable::Writer {
  std::mutex mu;
  std::size_t live = 0;        // slots whose published tag is a name
  std::size_t tombstones = 0;  // slots whose published tag is kTombstone
};

namespace {

constexpr char kCtxBadName[] = "object table: name must be 1..63 characters 0x21..0x7e";
constexpr char kCtxMovedFrom[] = "object table: moved-from table";

// The writer's view of a slot (only the writer stores, so relaxed loads see its own
// latest stores).
std::uint64_t published_tag(const d::Slot& s) noexcept {
  const std::uint64_t v = s.version.load(std::memory_order_relaxed);
  return s.tag[v & 1].load(std::memory_order_relaxed);
}

// Publishes a new (tag, value) in `s`, and the name words when `name` is given (only
// when the published tag is free: readers compare name words only under a live tag).
void publish(d::Slot& s, std::uint64_t tag, const ResolvedObject* value,
             const d::Key* name) noexcept {
  const std::uint64_t v = s.version.load(std::memory_order_relaxed);
  const std::size_t c = (v & 1) ^ 1;  // the copy readers of version v do not read
  // OT1: orders the stores below after this slot's previous OT3 (which published v);
  // pairs with a reader's OT5: a reader that read any of them reloads at least v, and
  // it started from an older version (readers of v read neither copy c nor, the slot
  // being free at v, the name words), so it retries.
  std::atomic_thread_fence(std::memory_order_release);
  // OT2: relaxed stores into the unpublished copy (and the name words of a free slot).
  if (name != nullptr) {
    for (std::size_t i = 0; i < d::kNameWords; ++i) {
      const bool used = i < d::kShortWords || name->length > d::kShortMax;
      s.name[i].store(used ? name->words[i] : 0, std::memory_order_relaxed);
    }
  }
  s.tag[c].store(tag, std::memory_order_relaxed);
  if (value != nullptr) {
    const auto words = std::bit_cast<std::array<std::uint64_t, d::kValueWords>>(*value);
    for (std::size_t j = 0; j < d::kValueWords; ++j) {
      s.value[c][j].store(words[j], std::memory_order_relaxed);
    }
  }
  // OT3: publishes copy c; pairs with a reader's OT4.
  s.version.store(v + 1, std::memory_order_release);
}

bool names_equal(const d::Slot& s, const d::Key& key) noexcept {
  return key.length > d::kShortMax ? d::name_equals<true>(s, key) : d::name_equals<false>(s, key);
}

struct Probe {
  bool present = false;
  std::size_t slot = 0;  // the name's slot when present
  bool has_free = false;
  std::size_t free_slot = 0;  // the first tombstone or empty slot on the path
};

}  // namespace

Result<ObjectTable> ObjectTable::create(std::size_t max_names) {
  return create_with_hash_mask(max_names, ~std::uint64_t{0});
}

Result<ObjectTable> ObjectTable::create_with_hash_mask(std::size_t max_names,
                                                       std::uint64_t hash_mask) {
  if (max_names == 0 || max_names > kMaxNames) {
    return Error(ErrorCode::InvalidArgument, "object table: max_names must be 1..65536");
  }
  const std::size_t slots = std::bit_ceil(2 * max_names);
  ObjectTable t;
  t.slots_.reset(new (std::nothrow) d::Slot[slots]);
  t.writer_.reset(new (std::nothrow) Writer);
  if (!t.slots_ || !t.writer_) {
    return Error(ErrorCode::OutOfMemory, "object table: allocating the slots");
  }
  t.slot_count_ = slots;
  t.slot_mask_ = slots - 1;
  t.max_names_ = max_names;
  t.hash_mask_ = hash_mask;
  return t;
}

ObjectTable::ObjectTable(ObjectTable&& other) noexcept
    : slots_(std::move(other.slots_)),
      slot_count_(std::exchange(other.slot_count_, 0)),
      slot_mask_(std::exchange(other.slot_mask_, 0)),
      max_names_(std::exchange(other.max_names_, 0)),
      hash_mask_(other.hash_mask_),
      writer_(std::move(other.writer_)) {}

ObjectTable& ObjectTable::operator=(ObjectTable&& other) noexcept {
  if (this != &other) {
    slots_ = std::move(other.slots_);
    slot_count_ = std::exchange(other.slot_count_, 0);
    slot_mask_ = std::exchange(other.slot_mask_, 0);
    max_names_ = std::exchange(other.max_names_, 0);
    hash_mask_ = other.hash_mask_;
    writer_ = std::move(other.writer_);
  }
  return *this;
}

ObjectTable::~ObjectTable() = default;

Error ObjectTable::miss_error(std::string_view name) noexcept {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, kCtxBadName);
  return Error(ErrorCode::NotFound, "object table: name not in the table");
}

std::optional<ResolvedObject> ObjectTable::find_other(std::string_view name) const noexcept {
  if (name.empty() || name.size() > kNameMax) return std::nullopt;
  const d::Key key = d::make_key(name, hash_mask_);
  return key.length > d::kShortMax ? probe<true>(key) : probe<false>(key);
}

namespace {

// Where `key` is, and where it would go. Writer only (under the mutex).
Probe locate(const d::Slot* slots, std::size_t count, const d::Key& key) noexcept {
  Probe p;
  const std::size_t mask = count - 1;
  std::size_t i = key.hash & mask;
  for (std::size_t n = 0; n < count; ++n, i = (i + 1) & mask) {
    const std::uint64_t tag = published_tag(slots[i]);
    if (tag == d::kEmpty || tag == d::kTombstone) {
      if (!p.has_free) {
        p.has_free = true;
        p.free_slot = i;
      }
      if (tag == d::kEmpty) return p;  // the end of the run: the name is not further on
      continue;
    }
    if (tag == key.tag && names_equal(slots[i], key)) {
      p.present = true;
      p.slot = i;
      return p;
    }
  }
  return p;
}

}  // namespace

Result<void> ObjectTable::insert(std::string_view name, const ResolvedObject& value) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, kCtxBadName);
  if (!writer_) return Error(ErrorCode::InvalidArgument, kCtxMovedFrom);
  const d::Key key = d::make_key(name, hash_mask_);
  const std::lock_guard<std::mutex> lock(writer_->mu);
  const Probe p = locate(slots_.get(), slot_count_, key);
  if (p.present) return Error(ErrorCode::AlreadyExists, "object table: name already present");
  if (writer_->live >= max_names_ || !p.has_free) {
    return Error(ErrorCode::OutOfMemory, "object table: full (max_names live names)",
                 /*sys_errno=*/0, max_names_);
  }
  d::Slot& s = slots_[p.free_slot];
  if (published_tag(s) == d::kTombstone) --writer_->tombstones;
  publish(s, key.tag, &value, &key);
  ++writer_->live;
  return {};
}

Result<void> ObjectTable::update(std::string_view name, const ResolvedObject& value) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, kCtxBadName);
  if (!writer_) return Error(ErrorCode::InvalidArgument, kCtxMovedFrom);
  const d::Key key = d::make_key(name, hash_mask_);
  const std::lock_guard<std::mutex> lock(writer_->mu);
  const Probe p = locate(slots_.get(), slot_count_, key);
  if (!p.present) return Error(ErrorCode::NotFound, "object table: name not in the table");
  publish(slots_[p.slot], key.tag, &value, nullptr);  // same name: name words untouched
  return {};
}

Result<void> ObjectTable::erase(std::string_view name) {
  if (!wire::valid_name(name)) return Error(ErrorCode::InvalidArgument, kCtxBadName);
  if (!writer_) return Error(ErrorCode::InvalidArgument, kCtxMovedFrom);
  const d::Key key = d::make_key(name, hash_mask_);
  const std::lock_guard<std::mutex> lock(writer_->mu);
  const Probe p = locate(slots_.get(), slot_count_, key);
  if (!p.present) return Error(ErrorCode::NotFound, "object table: name not in the table");
  publish(slots_[p.slot], d::kTombstone, nullptr, nullptr);
  --writer_->live;
  ++writer_->tombstones;
  // A tombstone followed by an empty slot ends its run: no probe needs to pass it, so
  // it becomes empty, and so does each tombstone before it (docs/registry.md, "Tombstones").
  std::size_t i = p.slot;
  for (std::size_t n = 0; n < slot_count_; ++n) {
    if (published_tag(slots_[i]) != d::kTombstone) break;
    if (published_tag(slots_[(i + 1) & slot_mask_]) != d::kEmpty) break;
    publish(slots_[i], d::kEmpty, nullptr, nullptr);
    --writer_->tombstones;
    i = (i - 1) & slot_mask_;
  }
  return {};
}

std::size_t ObjectTable::size() const {
  if (!writer_) return 0;
  const std::lock_guard<std::mutex> lock(writer_->mu);
  return writer_->live;
}

std::size_t ObjectTable::tombstones() const {
  if (!writer_) return 0;
  const std::lock_guard<std::mutex> lock(writer_->mu);
  return writer_->tombstones;
}

}  // namespace vipc::client
