// The broker's side of topics (broker_topics.hpp, docs/topics.md). Step names (T8)
// refer to the memory-ordering argument in docs/topics.md.
#include "broker/broker_topics.hpp"

#include <climits>
#include <utility>

namespace vipc::broker {
namespace {

Error create_failed(const Error& e) {
  return Error(e.code(), wire::ctx::kObjectCreate, e.sys_errno());
}

}  // namespace

Result<std::unique_ptr<TopicState>> TopicState::create(const core::TopicSpec& spec) {
  if (!core::valid_topic_spec(spec)) {
    return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
  }
  auto dir = core::create_topic_directory(spec);
  if (!dir) return create_failed(dir.error());
  auto dir_ro = sys::reopen_readonly(dir->fd.get());
  if (!dir_ro) return create_failed(dir_ro.error());
  auto bell = core::create_topic_bell(spec);
  if (!bell) return create_failed(bell.error());
  std::unique_ptr<TopicState> t(new TopicState());
  t->spec_ = spec;
  t->directory_fd_ = std::move(dir->fd);
  t->directory_map_ = std::move(dir->mapping);
  t->directory_ = static_cast<layout::TopicDirectorySegment*>(t->directory_map_.data());
  t->directory_ro_ = std::move(*dir_ro);
  t->bell_fd_ = std::move(bell->fd);
  t->bell_map_ = std::move(bell->mapping);
  t->bell_ = static_cast<layout::TopicBellSegment*>(t->bell_map_.data());
  return t;
}

TopicState::~TopicState() { close(); }

void TopicState::publish_change(std::atomic<std::uint32_t>& state, const Member& m) noexcept {
  const std::uint32_t status = m.live       ? layout::kTopicLive
                               : m.departed ? layout::kTopicDeparted
                                            : layout::kTopicFree;
  state.store(m.generation << layout::kTopicGenerationShift | status, std::memory_order_relaxed);
  // T8: the version is stored after the state words with release; a member that loads
  // it with acquire and sees the new value sees the new state.
  directory_->control.version.store(version_, std::memory_order_release);
  wake_all();
}

void TopicState::wake_all() noexcept {
  // Parked subscribers re-check their rings and the directory (T7's wake, by the broker).
  bell_->notify.value.fetch_add(1, std::memory_order_release);
  (void)sys::futex_wake(&bell_->notify.value, INT_MAX);
  for (const Member& s : subscribers_) {
    if (s.live && s.eventfd.valid()) (void)sys::eventfd_signal(s.eventfd.get());
  }
}

std::size_t TopicState::pick(const Member* slots, std::size_t n) const noexcept {
  std::size_t oldest = n;
  for (std::size_t i = 0; i < n; ++i) {
    if (!slots[i].live && !slots[i].departed) return i;
    if (slots[i].departed && (oldest == n || slots[i].join_version < slots[oldest].join_version)) {
      oldest = i;
    }
  }
  return oldest;
}

Result<TopicState::Outcome> TopicState::join(std::uint64_t client, std::uint64_t token,
                                             std::uint32_t generation, wire::TopicRole role,
                                             std::uint64_t request_id) {
  const bool pub = role == wire::TopicRole::Publisher;
  Member* slots = pub ? publishers_.data() : subscribers_.data();
  const std::size_t n = pub ? publishers_.size() : subscribers_.size();
  const std::size_t index = pick(slots, n);
  if (index == n) return Error(ErrorCode::ChannelFull, wire::ctx::kTopicFull);
  // Prepare everything that can fail.
  auto seg = pub ? core::create_topic_ring(spec_) : core::create_topic_cursor(spec_);
  if (!seg) return create_failed(seg.error());
  auto ro = sys::reopen_readonly(seg->fd.get());
  if (!ro) return create_failed(ro.error());
  sys::UniqueFd efd;
  std::vector<sys::UniqueFd> fds;
  auto own = seg->fd.duplicate();
  if (!own) return create_failed(own.error());
  fds.push_back(std::move(*own));
  if (!pub) {
    auto e = sys::eventfd();
    if (!e) return create_failed(e.error());
    auto give = e->duplicate();
    if (!give) return create_failed(give.error());
    efd = std::move(*e);
    fds.push_back(std::move(*give));
  }
  auto d = directory_ro_.duplicate();
  if (!d) return create_failed(d.error());
  fds.push_back(std::move(*d));
  auto b = bell_fd_.duplicate();
  if (!b) return create_failed(b.error());
  fds.push_back(std::move(*b));
  // Commit.
  Member& m = slots[index];
  m.live = true;
  m.departed = false;
  ++m.generation;
  m.join_version = ++version_;
  m.client = client;
  m.token = token;
  m.cap_generation = generation;
  m.segment = std::move(seg->fd);
  m.segment_ro = std::move(*ro);
  m.eventfd = std::move(efd);
  m.ring_view.reset();
  m.cursor_view.reset();
  wire::TopicJoinReply reply{};
  reply.role = static_cast<std::uint16_t>(role);
  reply.flags = static_cast<std::uint16_t>(spec_.flags);
  reply.index = static_cast<std::uint32_t>(index);
  reply.generation = m.generation;
  reply.capacity = spec_.capacity;
  reply.max_message_size = spec_.max_message_size;
  reply.join_version = m.join_version;
  publish_change(pub ? directory_->publishers[index] : directory_->subscribers[index], m);
  const auto nfds = static_cast<std::uint16_t>(fds.size());
  return Outcome{wire::encode_reply(request_id, reply, nfds), std::move(fds)};
}

Result<TopicState::Outcome> TopicState::member(wire::TopicRole role, std::uint32_t index,
                                               std::uint32_t generation, std::uint64_t request_id) {
  const bool pub = role == wire::TopicRole::Publisher;
  const std::size_t n = pub ? publishers_.size() : subscribers_.size();
  if (index >= n) return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
  const Member& m = pub ? publishers_[index] : subscribers_[index];
  if (!(m.live || m.departed) || m.generation != generation) {
    return Error(ErrorCode::NotFound, wire::ctx::kTopicMemberGone);
  }
  std::vector<sys::UniqueFd> fds;
  auto seg = m.segment_ro.duplicate();
  if (!seg) return create_failed(seg.error());
  fds.push_back(std::move(*seg));
  if (!pub) {
    auto e = m.eventfd.duplicate();
    if (!e) return create_failed(e.error());
    fds.push_back(std::move(*e));
  }
  wire::TopicMemberReply reply{};
  reply.role = static_cast<std::uint16_t>(role);
  reply.index = index;
  reply.generation = m.generation;
  reply.join_version = m.join_version;
  const auto nfds = static_cast<std::uint16_t>(fds.size());
  return Outcome{wire::encode_reply(request_id, reply, nfds), std::move(fds)};
}

Result<TopicState::Outcome> TopicState::leave(std::uint64_t client, wire::TopicRole role,
                                              std::uint32_t index, std::uint32_t generation,
                                              std::uint64_t request_id) {
  const bool pub = role == wire::TopicRole::Publisher;
  const std::size_t n = pub ? publishers_.size() : subscribers_.size();
  if (index >= n) return Error(ErrorCode::InvalidArgument, wire::ctx::kBadParameters);
  const Member& m = pub ? publishers_[index] : subscribers_[index];
  if (!m.live || m.generation != generation) {
    return Error(ErrorCode::NotFound, wire::ctx::kTopicMemberGone);
  }
  if (m.client != client) return Error(ErrorCode::PermissionDenied, wire::ctx::kMissingRight);
  retire(role, index);
  return Outcome{wire::encode_reply(request_id, wire::TopicLeaveReply{0}), {}};
}

void TopicState::retire(wire::TopicRole role, std::uint32_t index, bool withdraw) noexcept {
  const bool pub = role == wire::TopicRole::Publisher;
  Member& m = pub ? publishers_[index] : subscribers_[index];
  m.live = false;
  m.departed = pub && !withdraw;  // subscribers may still drain its ring
  m.client = 0;
  ++version_;
  if (!pub) {
    // A subscriber that armed its eventfd counted itself in `waiting` (T7); take it
    // back so publishers stop acting on it.
    const std::uint64_t bit = std::uint64_t{1} << (index % 64);
    const std::uint64_t old = bell_->armed.bits[index / 64].fetch_and(~bit);
    if ((old & bit) != 0) bell_->waiting.value.fetch_sub(layout::kTopicWaitOne);
  }
  publish_change(pub ? directory_->publishers[index] : directory_->subscribers[index], m);
  // The descriptors go (a departed publisher's read-only open stays until its index is
  // reused); other members keep their own mappings.
  m.segment.reset();
  if (!m.departed) {
    m.segment_ro.reset();
    m.ring_view.reset();
  }
  m.cursor_view.reset();
  m.eventfd.reset();
}

std::size_t TopicState::client_gone(std::uint64_t client) noexcept {
  std::size_t n = 0;
  for (std::uint32_t i = 0; i < publishers_.size(); ++i) {
    if (publishers_[i].live && publishers_[i].client == client) {
      retire(wire::TopicRole::Publisher, i);
      ++n;
    }
  }
  for (std::uint32_t i = 0; i < subscribers_.size(); ++i) {
    if (subscribers_[i].live && subscribers_[i].client == client) {
      retire(wire::TopicRole::Subscriber, i);
      ++n;
    }
  }
  return n;
}

std::size_t TopicState::sweep(const std::function<bool(std::uint64_t, std::uint32_t)>& alive,
                              bool revoked) noexcept {
  std::size_t n = 0;
  for (std::uint32_t i = 0; i < publishers_.size(); ++i) {
    const Member& m = publishers_[i];
    if (m.live && !alive(m.token, m.cap_generation)) {
      retire(wire::TopicRole::Publisher, i, revoked);
      ++n;
    }
  }
  for (std::uint32_t i = 0; i < subscribers_.size(); ++i) {
    const Member& m = subscribers_[i];
    if (m.live && !alive(m.token, m.cap_generation)) {
      retire(wire::TopicRole::Subscriber, i);
      ++n;
    }
  }
  return n;
}

void TopicState::close() noexcept {
  if (directory_ == nullptr) return;
  directory_->control.closed.store(1, std::memory_order_relaxed);
  ++version_;
  directory_->control.version.store(version_, std::memory_order_release);  // T8
  wake_all();
}

std::size_t TopicState::publishers() const noexcept {
  std::size_t n = 0;
  for (const Member& m : publishers_) n += m.live ? 1 : 0;
  return n;
}

bool TopicState::holds_back() const noexcept {
  return (spec_.flags & wire::kObjectTopicHoldBack) != 0;
}

std::vector<std::uint64_t> TopicState::subscriber_clients() const {
  std::vector<std::uint64_t> out;
  for (const Member& m : subscribers_) {
    if (m.live) out.push_back(m.client);
  }
  return out;
}

std::size_t TopicState::subscribers() const noexcept {
  std::size_t n = 0;
  for (const Member& m : subscribers_) n += m.live ? 1 : 0;
  return n;
}

}  // namespace vipc::broker
