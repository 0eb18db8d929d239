#include "broker/observe.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <nlohmann/json.hpp>

#include "broker/platform.hpp"
#include "core/clock.hpp"
#include "core/topic_layout.hpp"

namespace vipc::broker {

namespace {

using nlohmann::json;

const char* kind_name(ObjectKind k) noexcept {
  switch (k) {
    case ObjectKind::Endpoint:
      return "endpoint";
    case ObjectKind::Channel:
      return "channel";
    case ObjectKind::Topic:
      return "topic";
    case ObjectKind::Region:
      return "region";
    case ObjectKind::Ring:
      return "ring";
    case ObjectKind::Buffer:
      return "buffer";
  }
  return "object";
}

const char* policy_name(std::uint16_t flags) noexcept {
  switch (wire::overflow_of(flags)) {
    case 1:
      return "error";
    case 2:
      return "drop-newest";
    case wire::kOverflowDropOldest:
      return "drop-oldest";
    default:
      return "block";
  }
}

std::uint64_t realtime_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// "HH:MM:SS.uuuuuu" (UTC) of a CLOCK_MONOTONIC time.
std::string clock_text(std::uint64_t mono_ns, std::uint64_t now_mono, std::uint64_t now_real) {
  const std::uint64_t real = now_real - (now_mono > mono_ns ? now_mono - mono_ns : 0);
  const time_t secs = static_cast<time_t>(real / 1'000'000'000ULL);
  tm t{};
  ::gmtime_r(&secs, &t);
  return fmt::format("{:02}:{:02}:{:02}.{:06}", t.tm_hour, t.tm_min, t.tm_sec,
                     (real % 1'000'000'000ULL) / 1000);
}

json stats_json(const core::RingStats& s) {
  return json{{"sent", s.sent},
              {"received", s.received},
              {"depth", s.depth()},
              {"bytes_sent", s.bytes_sent},
              {"bytes_received", s.bytes_received},
              {"full_events", s.full_events},
              {"drops", s.drops},
              {"lost", s.lost},
              {"corrupt", s.corrupt},
              {"producer_parks", s.producer_parks},
              {"consumer_parks", s.consumer_parks},
              {"producer_wakeups", s.producer_wakeups},
              {"consumer_wakeups", s.consumer_wakeups},
              {"producer_spins", s.producer_spins},
              {"consumer_spins", s.consumer_spins}};
}

void add(core::RingStats& a, const core::RingStats& b) noexcept {
  a.sent += b.sent;
  a.received += b.received;
  a.bytes_sent += b.bytes_sent;
  a.bytes_received += b.bytes_received;
  a.full_events += b.full_events;
  a.drops += b.drops;
  a.corrupt += b.corrupt;
  a.producer_parks += b.producer_parks;
  a.consumer_parks += b.consumer_parks;
  a.producer_wakeups += b.producer_wakeups;
  a.consumer_wakeups += b.consumer_wakeups;
  a.producer_spins += b.producer_spins;
  a.consumer_spins += b.consumer_spins;
  a.lost += b.lost;
}

// A topic's members and the lag of each subscriber; `total` gets the topic's counters
// in the channels' terms (sent: published, received: delivered over every subscriber,
// lost: missed, depth: the largest lag).
json topic_json(const TopicSample& t, std::uint32_t capacity, core::RingStats& total,
                std::uint64_t& max_lag) {
  json pubs = json::array();
  std::map<std::uint32_t, pid_t> pid_of;
  for (const TopicPublisherSample& p : t.publishers) {
    total.sent += p.published;
    pid_of[p.index] = p.pid;
    pubs.push_back({{"index", p.index},
                    {"pid", p.pid},
                    {"departed", p.departed},
                    {"sampled", p.sampled},
                    {"published", p.published}});
  }
  json subs = json::array();
  max_lag = 0;
  for (const TopicSubscriberSample& s : t.subscribers) {
    total.received += s.delivered;
    total.lost += s.missed;
    total.corrupt += s.corrupt;
    max_lag = std::max(max_lag, s.lag);
    json behind = json::array();
    for (const TopicLag& l : s.behind) {
      behind.push_back({{"publisher", l.publisher}, {"pid", pid_of[l.publisher]}, {"lag", l.lag}});
    }
    subs.push_back(
        {{"index", s.index},
         {"pid", s.pid},
         {"sampled", s.sampled},
         {"delivered", s.delivered},
         {"missed", s.missed},
         {"corrupt", s.corrupt},
         {"lag", s.lag},
         {"overwritten", s.overwritten},
         {"lag_ratio",
          capacity == 0 ? 0.0 : static_cast<double>(s.lag) / static_cast<double>(capacity)},
         {"behind", std::move(behind)}});
  }
  return json{{"published", total.sent},       {"delivered", total.received},
              {"missed", total.lost},          {"max_lag", max_lag},
              {"publishers", std::move(pubs)}, {"subscribers", std::move(subs)}};
}

}  // namespace

Result<std::unique_ptr<Observer>> Observer::create(std::string dir) {
  auto sw = core::TraceSwitch::create();
  if (!sw) return sw.error();
  return std::unique_ptr<Observer>(new Observer(std::move(dir), std::move(*sw)));
}

Observer::Observer(std::string dir, core::TraceSwitch sw) noexcept
    : dir_(std::move(dir)), switch_(std::move(sw)) {}

Observer::~Observer() = default;

Result<Observer::Attached> Observer::attach(std::uint64_t client, pid_t pid,
                                            std::uint32_t capacity) {
  if (capacity == 0) capacity = kRingCapacity;
  auto reader = core::TraceRingReader::create(capacity);
  if (!reader) return reader.error();
  auto sw = switch_.reader_fd();
  if (!sw) return sw.error();
  if (auto it = rings_.find(client); it != rings_.end()) {
    lost_gone_ += it->second.reader.lost() + it->second.reader.rejected();
    rings_.erase(it);
  }
  sys::UniqueFd ring = reader->release_fd();
  rings_.emplace(client, ClientRing{pid, std::move(*reader)});
  return Attached{std::move(*sw), std::move(ring), capacity};
}

void Observer::forget(std::uint64_t client, const RingLookup& lookup) {
  auto it = rings_.find(client);
  if (it == rings_.end()) return;
  ring_cache_.clear();
  topic_cache_.clear();
  drain_ring(client, it->second, lookup);
  lost_gone_ += it->second.reader.lost() + it->second.reader.rejected();
  rings_.erase(it);
}

void Observer::set_enabled(bool on) noexcept { switch_.set(on); }
bool Observer::enabled() const noexcept { return switch_.enabled(); }

wire::TraceControlReply Observer::status() const noexcept {
  wire::TraceControlReply r{};
  r.enabled = enabled() ? 1 : 0;
  r.records = records_;
  r.lost = lost_gone_;
  for (const auto& [id, ring] : rings_) r.lost += ring.reader.lost() + ring.reader.rejected();
  r.processes = rings_.size();
  return r;
}

int Observer::wait_ms(std::uint64_t now_ns) const noexcept {
  if (!enabled() && dir_.empty()) return static_cast<int>(kFilesOffMs);  // nothing to do
  const std::uint64_t period_ms = enabled() ? kDrainOnMs : kFilesOffMs;
  const std::uint64_t last = enabled() ? last_drain_ns_ : last_files_ns_;
  const std::uint64_t due = last + period_ms * 1'000'000ULL;
  if (now_ns >= due) return 0;
  return static_cast<int>((due - now_ns) / 1'000'000ULL) + 1;
}

bool Observer::files_due(std::uint64_t now_ns) const noexcept {
  if (dir_.empty()) return false;
  const std::uint64_t period_ms = enabled() ? kFilesOnMs : kFilesOffMs;
  return now_ns >= last_files_ns_ + period_ms * 1'000'000ULL;
}

void Observer::drain(std::uint64_t now_ns, const RingLookup& lookup, bool force) {
  if (!force && now_ns < last_drain_ns_ + kDrainOnMs * 1'000'000ULL) return;
  last_drain_ns_ = now_ns;
  ring_cache_.clear();
  topic_cache_.clear();
  const RingLookup cached = [&](std::uint64_t id) -> std::optional<TracedRing> {
    auto it = ring_cache_.find(id);
    if (it == ring_cache_.end()) it = ring_cache_.emplace(id, lookup(id)).first;
    return it->second;
  };
  for (auto& [client, ring] : rings_) drain_ring(client, ring, cached);
  expire_pending(now_ns, false, cached);
}

void Observer::drain_ring(std::uint64_t, ClientRing& r, const RingLookup& lookup) {
  for (;;) {
    scratch_.clear();
    const std::size_t n = r.reader.drain(scratch_, 4096);
    if (n != 0 && ns_per_cycle_ == 0) ns_per_cycle_ = core::CycleClock::instance().ns_per_cycle();
    // Stamps are cycle counts: turned into CLOCK_MONOTONIC here, against a pair of
    // readings taken now (the counter is shared by every CPU of the machine).
    const std::uint64_t now_cycles = core::cycles();
    const std::uint64_t now_mono = core::now_ns();
    for (const core::TraceEvent& e : scratch_) {
      const std::uint64_t ago = e.stamp < now_cycles ? now_cycles - e.stamp : 0;
      const auto ago_ns = static_cast<std::uint64_t>(static_cast<double>(ago) * ns_per_cycle_);
      on_event(e, ago_ns < now_mono ? now_mono - ago_ns : 0, r.pid, lookup);
    }
    records_ += n;
    if (n < 4096) break;
  }
}

void Observer::on_event(const core::TraceEvent& e, std::uint64_t mono_ns, pid_t pid,
                        const RingLookup& lookup) {
  if (e.kind == layout::kTracePublish || e.kind == layout::kTraceDeliver) {
    on_topic_event(e, mono_ns, pid);
    return;
  }
  if (layout::trace_is_handoff(e.kind)) {
    on_handoff_event(e, mono_ns, pid);
    return;
  }
  // A send and its receive may be drained in either order (the receiver can record
  // before the sender does), so whichever comes first waits for the other.
  // A reply is paired like a message, in a key space of its own (the request ring's id
  // with the top bit set: a reply ring's positions are not the request ring's).
  const bool reply = e.kind == layout::kTraceReply || e.kind == layout::kTraceReplyReceive;
  const bool is_send = e.kind == layout::kTraceSend || e.kind == layout::kTraceReply;
  const std::uint64_t key = reply ? e.ring_id | kReplyKey : e.ring_id;
  auto& mine = is_send ? sends_ : receives_;
  auto& other = is_send ? receives_ : sends_;
  if (auto rit = other.find(key); rit != other.end()) {
    if (auto pit = rit->second.find(e.position); pit != rit->second.end()) {
      const Pending match = pit->second;
      rit->second.erase(pit);
      --pending_count_;
      if (rit->second.empty()) other.erase(rit);
      const Pending self{e, pid, mono_ns};
      emit_pair(is_send ? &self : &match, is_send ? &match : &self, lookup);
      return;
    }
  }
  if (pending_count_ >= kPendingMax) expire_pending(0, true, lookup);
  auto [it, fresh] = mine[key].insert_or_assign(e.position, Pending{e, pid, mono_ns});
  (void)it;
  if (fresh) ++pending_count_;
}

void Observer::set_latency(Message& m, std::uint64_t from, std::uint64_t to) const noexcept {
  if (to >= from) {
    m.latency_ns = static_cast<std::uint64_t>(static_cast<double>(to - from) * ns_per_cycle_);
    m.has_latency = true;
  } else if (static_cast<double>(from - to) * ns_per_cycle_ <= kStampSkewNs) {
    m.latency_ns = 0;
    m.has_latency = true;
  }
}

void Observer::emit_pair(const Pending* send, const Pending* receive, const RingLookup& lookup) {
  const Pending& any = send != nullptr ? *send : *receive;
  Message m;
  m.time_ns = send != nullptr ? send->mono_ns : receive->mono_ns;
  m.type = any.event.type;
  m.size = any.event.size;
  m.caps = any.event.cap_count;
  m.reply = any.event.kind == layout::kTraceReply || any.event.kind == layout::kTraceReplyReceive;
  if (const std::optional<TracedRing> info = lookup(any.event.ring_id)) {
    m.object_id = info->object_id;
    m.channel = info->channel;
    m.src = m.reply ? info->receiver_pid : info->sender_pid;
    m.dst = m.reply ? info->sender_pid : info->receiver_pid;
  } else {
    m.channel = fmt::format("ring#{}", any.event.ring_id);
  }
  if (send != nullptr) m.src = send->pid;
  if (receive != nullptr) m.dst = receive->pid;
  if (send != nullptr && receive != nullptr) {
    set_latency(m, send->event.stamp, receive->event.stamp);
  }
  // The channel's histogram is of its messages; a reply's latency is shown on its row.
  if (m.has_latency && m.object_id != 0 && !m.reply) {
    ChannelLatency& l = latency_[m.object_id];
    l.hist.record(m.latency_ns);
    ++l.log2[static_cast<std::size_t>(std::bit_width(m.latency_ns))];
  }
  emit(std::move(m));
}

void Observer::on_topic_event(const core::TraceEvent& e, std::uint64_t mono_ns, pid_t pid) {
  // One publication, any number of deliveries, drained in any order: the publication
  // stays (kPendingAgeNs) for deliveries still to come; a delivery seen first waits.
  const TopicKey key{e.ring_id, e.topic_ring, e.position};
  auto it = topics_pending_.find(key);
  if (it == topics_pending_.end()) {
    if (pending_count_ >= kPendingMax) expire_topics(0, true);
    it = topics_pending_.emplace(key, TopicPending{}).first;
    it->second.first_ns = mono_ns;
    ++pending_count_;
  }
  TopicPending& t = it->second;
  const Pending self{e, pid, mono_ns};
  if (e.kind == layout::kTracePublish) {
    if (t.publish) return;  // a duplicate (a lying writer): the first one counts
    t.publish = self;
    for (const Pending& d : t.deliveries) emit_topic(key, &*t.publish, &d);
    t.paired = t.paired || !t.deliveries.empty();
    t.deliveries.clear();
  } else if (t.publish) {
    emit_topic(key, &*t.publish, &self);
    t.paired = true;
  } else if (t.deliveries.size() < layout::kTopicSubscribersMax) {
    t.deliveries.push_back(self);
  }
}

void Observer::emit_topic(const TopicKey& key, const Pending* publish, const Pending* delivery) {
  const Pending& any = publish != nullptr ? *publish : *delivery;
  const auto [object_id, ring, position] = key;
  (void)position;
  Message m;
  m.topic = true;
  m.time_ns = any.mono_ns;
  m.type = any.event.type;
  m.size = any.event.size;
  m.object_id = object_id;
  const std::uint32_t publisher = ring & 0xffu;
  const std::uint64_t cache_key = object_id << 8 | publisher;
  auto c = topic_cache_.find(cache_key);
  if (c == topic_cache_.end()) {
    c = topic_cache_
            .emplace(cache_key, topic_lookup_ ? topic_lookup_(object_id, publisher) : std::nullopt)
            .first;
  }
  if (c->second) {
    m.channel = c->second->name;
    m.src = c->second->publisher_pid;
  } else {
    m.channel = fmt::format("topic#{}", object_id);
  }
  if (publish != nullptr) m.src = publish->pid;
  if (delivery != nullptr) m.dst = delivery->pid;
  if (publish != nullptr && delivery != nullptr) {
    set_latency(m, publish->event.stamp, delivery->event.stamp);
  }
  if (m.has_latency) {
    ChannelLatency& l = latency_[m.object_id];
    l.hist.record(m.latency_ns);
    ++l.log2[static_cast<std::size_t>(std::bit_width(m.latency_ns))];
  }
  emit(std::move(m));
}

void Observer::expire_topics(std::uint64_t now_ns, bool all) {
  // A publication nobody received (no subscriber, or a stuck one) is shown alone; a
  // delivery whose publication was not seen (lost record, tracing switched on between)
  // too, without a latency.
  for (auto it = topics_pending_.begin(); it != topics_pending_.end();) {
    TopicPending& t = it->second;
    if (!all && t.first_ns + kPendingAgeNs > now_ns) {
      ++it;
      continue;
    }
    if (t.publish && !t.paired) emit_topic(it->first, &*t.publish, nullptr);
    for (const Pending& d : t.deliveries) emit_topic(it->first, nullptr, &d);
    it = topics_pending_.erase(it);
    --pending_count_;
  }
}

void Observer::expire_pending(std::uint64_t now_ns, bool all, const RingLookup& lookup) {
  expire_topics(now_ns, all);
  expire_handoffs(now_ns, all);
  // Halves whose partner was not seen (yet): shown without a latency once they are old
  // (or when the table is full), so that a stuck receiver's messages still appear.
  for (auto* table : {&sends_, &receives_}) {
    const bool sends = table == &sends_;
    for (auto rit = table->begin(); rit != table->end();) {
      for (auto pit = rit->second.begin(); pit != rit->second.end();) {
        if (all || pit->second.mono_ns + kPendingAgeNs <= now_ns) {
          emit_pair(sends ? &pit->second : nullptr, sends ? nullptr : &pit->second, lookup);
          pit = rit->second.erase(pit);
          --pending_count_;
        } else {
          ++pit;
        }
      }
      rit = rit->second.empty() ? table->erase(rit) : std::next(rit);
    }
  }
}

void Observer::emit(Message m) {
  m.seq = next_seq_++;
  messages_.push_back(std::move(m));
  while (messages_.size() > kMessagesKept) messages_.pop_front();
}

void Observer::write_file(const char* name, const std::string& text) noexcept {
  const std::string path = dir_ + "/" + name;
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  std::size_t off = 0;
  while (off < text.size()) {
    const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (off == text.size()) {
    (void)::rename(tmp.c_str(), path.c_str());
  } else {
    (void)::unlink(tmp.c_str());
  }
}

void Observer::remove_files() noexcept {
  if (dir_.empty() || !wrote_files_) return;
  for (const char* name :
       {"trace", "messages", "channels", "trace.json", "messages.json", "channels.json"}) {
    platform::unlink_quietly(dir_ + "/" + name);
  }
}

void Observer::write_views(std::uint64_t now_ns, const std::vector<ObjectView>& objects,
                           const std::vector<ClientView>& clients, std::size_t buffers) {
  if (dir_.empty()) return;
  last_files_ns_ = now_ns;
  wrote_files_ = true;
  const std::uint64_t now_real = realtime_ns();
  const wire::TraceControlReply st = status();

  // ---- trace
  {
    json procs = json::array();
    std::string text = fmt::format(
        "tracing: {}\nrecords: {}\nlost: {}\nprocesses: {}\n\n{:>8}  {:>8}  {:>10}  {:>10}\n",
        st.enabled != 0 ? "on" : "off", st.records, st.lost, st.processes, "pid", "client",
        "capacity", "lost");
    for (const auto& [client, ring] : rings_) {
      const std::uint64_t lost = ring.reader.lost() + ring.reader.rejected();
      text += fmt::format("{:>8}  {:>8}  {:>10}  {:>10}\n", ring.pid, client,
                          ring.reader.capacity(), lost);
      procs.push_back({{"pid", ring.pid},
                       {"client", client},
                       {"capacity", ring.reader.capacity()},
                       {"lost", lost}});
    }
    write_file("trace", text);
    json j{{"enabled", st.enabled != 0},
           {"records", st.records},
           {"lost", st.lost},
           {"processes", procs}};
    write_file("trace.json", j.dump() + "\n");
  }

  // ---- messages
  {
    std::string text = fmt::format(
        "{:<15}  {:<7}  {:>7}  {:>7}  {:<20}  {:>10}  {:>6}  {:>4}  {:>10}  {}\n", "time (UTC)",
        "kind", "src", "dst", "channel", "type", "size", "caps", "latency_ns", "mode");
    json arr = json::array();
    const std::size_t skip =
        messages_.size() > kMessagesInFiles ? messages_.size() - kMessagesInFiles : 0;
    for (std::size_t i = skip; i < messages_.size(); ++i) {
      const Message& m = messages_[i];
      const std::string when = clock_text(m.time_ns, now_ns, now_real);
      const char* kind = m.kind != nullptr ? m.kind
                         : m.topic         ? "topic"
                         : m.reply         ? "reply"
                                           : "channel";
      text += fmt::format("{:<15}  {:<7}  {:>7}  {:>7}  {:<20}  {:>10}  {:>6}  {:>4}  {:>10}  {}\n",
                          when, kind, m.src == 0 ? std::string("-") : std::to_string(m.src),
                          m.dst == 0 ? std::string("-") : std::to_string(m.dst),
                          m.channel.empty() ? "?" : m.channel, m.type, m.size, m.caps,
                          m.has_latency ? std::to_string(m.latency_ns) : std::string("-"),
                          m.mode != nullptr ? m.mode : "-");
      json jm{{"seq", m.seq},
              {"time", when},
              {"time_ns", m.time_ns},
              {"kind", kind},
              {"mode", m.mode != nullptr ? json(m.mode) : json(nullptr)},
              {"src_pid", m.src},
              {"dst_pid", m.dst},
              {"channel", m.channel},
              {"type", m.type},
              {"size", m.size},
              {"caps", m.caps},
              {"latency_ns", m.has_latency ? json(m.latency_ns) : json(nullptr)}};
      arr.push_back(std::move(jm));
    }
    write_file("messages", text);
    write_file("messages.json",
               json{{"tracing", st.enabled != 0}, {"messages", std::move(arr)}}.dump() + "\n");
  }

  // ---- channels
  {
    std::string text = fmt::format(
        "{:<20}  {:<8}  {:>7}  {:>7}  {:>7}  {:>10}  {:>10}  {:>6}  "
        "{:>8}  {:>8}  {:>8}  {:<11}\n",
        "name", "kind", "owner", "peers", "senders", "sent", "received", "depth", "drops", "full",
        "parks", "policy");
    json arr = json::array();
    std::string lag_text;
    for (const ObjectView& o : objects) {
      core::RingStats total;
      std::uint64_t max_lag = 0;
      json topic;
      if (o.kind == ObjectKind::Topic && !o.queue) {
        topic = topic_json(o.topic, o.capacity, total, max_lag);
      }
      json senders = json::array();
      for (const SenderView& s : o.senders) {
        if (s.sampled) add(total, s.stats);
        json js = s.sampled ? stats_json(s.stats) : json::object();
        js["index"] = s.index;
        js["ring_id"] = s.ring_id;
        js["pid"] = s.pid;
        js["uid"] = s.uid;
        js["sampled"] = s.sampled;
        senders.push_back(std::move(js));
      }
      const std::string name = o.name.empty() ? fmt::format("#{}", o.id) : o.name;
      const bool region = o.kind == ObjectKind::Region && !o.queue;
      const std::size_t peers = o.kind == ObjectKind::Topic ? o.publishers + o.subscribers
                                : region                    ? o.holders.size()
                                                            : o.senders.size();
      const char* kind = o.queue ? "queue" : kind_name(o.kind);
      const std::uint64_t depth = o.queue ? o.queued : topic.is_null() ? total.depth() : max_lag;
      text += fmt::format(
          "{:<20}  {:<8}  {:>7}  {:>7}  {:>7}  {:>10}  {:>10}  {:>6}  {:>8}  {:>8}  {:>8}  "
          "{:<11}\n",
          name, kind, o.owner_pid, peers, o.senders.size(), total.sent, total.received, depth,
          total.drops + total.lost, total.full_events, total.producer_parks + total.consumer_parks,
          o.queue || region ? "-" : policy_name(o.flags));
      json jo{{"id", o.id},
              {"name", name},
              {"kind", kind},
              {"owner_pid", o.owner_pid},
              {"owner_uid", o.owner_uid},
              {"capacity", o.capacity},
              {"max_message_size", o.max_message_size},
              {"policy", policy_name(o.flags)},
              {"synchronous", (o.flags & wire::kObjectSynchronous) != 0},
              {"receiver_pid", o.receiver_pid},
              {"senders", std::move(senders)},
              {"totals", stats_json(total)}};
      if (o.kind == ObjectKind::Topic) {
        jo["publishers"] = o.publishers;
        jo["subscribers"] = o.subscribers;
      }
      if (!topic.is_null()) {
        jo["totals"]["depth"] = max_lag;
        for (const TopicSubscriberSample& sub : o.topic.subscribers) {
          lag_text +=
              fmt::format("{:<20}  {:>5}  {:>7}  {:>10}  {:>8}  {:>8}  {:>11}\n", name, sub.index,
                          sub.pid, sub.delivered, sub.missed, sub.lag, sub.overwritten);
        }
        jo["topic"] = std::move(topic);
      }
      if (region) {
        jo["size"] = o.bytes;
        jo["holders"] = o.holders;
        jo["pending"] = o.pending;
        jo["policy"] = "-";
      }
      if (o.queue) {
        jo["queued"] = o.queued;
        jo["mode"] = o.mode;
        jo["policy"] = "-";
      }
      json lat{{"count", 0}};
      if (auto it = latency_.find(o.id); it != latency_.end()) {
        const core::Histogram& h = it->second.hist;
        json buckets = json::array();
        for (std::size_t b = 0; b < it->second.log2.size(); ++b) {
          if (it->second.log2[b] == 0) continue;
          const std::uint64_t upper = b == 0 ? 0 : (b >= 64 ? ~0ULL : (1ULL << b) - 1);
          buckets.push_back({{"le_ns", upper}, {"count", it->second.log2[b]}});
        }
        lat = json{{"count", h.count()},         {"min_ns", h.min()},
                   {"p50_ns", h.percentile(50)}, {"p90_ns", h.percentile(90)},
                   {"p99_ns", h.percentile(99)}, {"p999_ns", h.percentile(99.9)},
                   {"max_ns", h.max()},          {"buckets", std::move(buckets)}};
      }
      jo["latency"] = std::move(lat);
      arr.push_back(std::move(jo));
    }
    json jc = json::array();
    for (const ClientView& c : clients) {
      jc.push_back({{"client", c.id}, {"pid", c.pid}, {"uid", c.uid}});
    }
    if (!lag_text.empty()) {
      text += fmt::format("\n{:<20}  {:>5}  {:>7}  {:>10}  {:>8}  {:>8}  {:>11}\n", "topic", "sub",
                          "pid", "delivered", "missed", "lag", "overwritten") +
              lag_text;
    }
    text += fmt::format("\nclients: {}  buffers and regions: {}  tracing: {}\n", clients.size(),
                        buffers, st.enabled != 0 ? "on" : "off");
    write_file("channels", text);
    json j{{"time_ns", now_ns},
           {"tracing", st.enabled != 0},
           {"objects", std::move(arr)},
           {"clients", std::move(jc)},
           {"buffers", buffers}};
    write_file("channels.json", j.dump() + "\n");
  }
}

}  // namespace vipc::broker
