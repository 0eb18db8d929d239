#include "broker/mq_keeper.hpp"

#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <thread>
#include <utility>

#include "broker/platform.hpp"

namespace vipc::broker {

namespace keep_wire {

Record make(Kind kind, std::uint64_t queue_id) noexcept {
  Record r{};
  r.magic = kMagic;
  r.version = kVersion;
  r.kind = static_cast<std::uint16_t>(kind);
  r.queue_id = queue_id;
  return r;
}

bool parse(const std::byte* bytes, std::size_t size, Record* out) noexcept {
  if (size != sizeof(Record)) return false;
  std::memcpy(out, bytes, sizeof(Record));
  if (out->magic != kMagic || out->version != kVersion) return false;
  if (out->kind < static_cast<std::uint16_t>(Kind::Put) ||
      out->kind > static_cast<std::uint16_t>(Kind::Ready)) {
    return false;
  }
  return std::memchr(out->name.data(), '\0', out->name.size()) != nullptr;
}

}  // namespace keep_wire

namespace {

using namespace std::chrono_literals;
using keep_wire::Kind;
using keep_wire::Record;

constexpr int kKeeperBrokerFd = 3;
constexpr int kKeeperListenFd = 4;
constexpr int kAnswerMs = 5000;  // a peer silent this long is given up

std::span<const std::byte> bytes_of(const Record& r) noexcept {
  return {reinterpret_cast<const std::byte*>(&r), sizeof r};
}

// Sends without blocking for more than `limit`: the peer reads at once unless it is
// stopped or stuck, which must not stop the sender for good.
Result<void> send_within(int sock, const Record& r, std::span<const int> fds,
                         std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto s = platform::send_packet(sock, bytes_of(r), fds, /*nonblocking=*/true);
    if (s || s.error().code() != ErrorCode::WouldBlock) return s;
    if (std::chrono::steady_clock::now() >= deadline) {
      return Error(ErrorCode::Timeout, "mq keeper: peer does not read");
    }
    std::this_thread::sleep_for(1ms);
  }
}

struct Received {
  Record record{};
  sys::UniqueFd fd;  // the one descriptor a Put carries
};

// One record, waiting up to `timeout_ms`. ChannelClosed at the end of the stream,
// Timeout when nothing came, ProtocolError for anything malformed.
Result<Received> receive(int sock, int timeout_ms) {
  if (timeout_ms != 0) {
    auto readable = sys::poll_readable(sock, timeout_ms);
    if (!readable) return readable.error();
    if (!*readable) return Error(ErrorCode::Timeout, "mq keeper: no answer");
  }
  alignas(8) std::array<std::byte, sizeof(Record) + 8> buf{};
  auto pkt = platform::recv_packet(sock, buf, /*nonblocking=*/true);
  if (!pkt) return pkt.error();
  Received out;
  const bool well_formed = !pkt->truncated && !pkt->fds_truncated &&
                           keep_wire::parse(buf.data(), pkt->size, &out.record);
  const bool put = well_formed && out.record.kind == static_cast<std::uint16_t>(Kind::Put);
  if (!well_formed || pkt->fds.size() != (put ? 1u : 0u)) {
    return Error(ErrorCode::ProtocolError, "mq keeper: malformed record");
  }
  if (put) out.fd = std::move(pkt->fds[0]);
  return out;
}

}  // namespace

// ------------------------------------------------------------ the broker's end

Result<MqKeeper> MqKeeper::spawn(const std::string& exe, const std::string& dir) {
  static std::uint64_t spawned = 0;  // one broker thread spawns keepers
  const std::string path =
      dir + "/keeper-" + std::to_string(::getpid()) + "-" + std::to_string(++spawned) + ".sock";
  platform::unlink_quietly(path);  // left by an earlier broker of the same pid
  auto listen = platform::listen_seqpacket(path, 8);
  if (!listen) return listen.error();
  auto pair = platform::socketpair_seqpacket();
  if (!pair) {
    platform::unlink_quietly(path);
    return pair.error();
  }
  const std::array<int, 2> pass{(*pair)[1].get(), listen->get()};
  if (auto r = platform::spawn_detached({exe, "--mq-keeper", path}, "", pass); !r) {
    platform::unlink_quietly(path);
    return r.error();
  }
  MqKeeper k;
  k.sock_ = std::move((*pair)[0]);
  k.path_ = path;
  (*pair)[1].reset();
  // Until it has started, the keeper's process still holds copies of this process's
  // descriptors: the lock file's among them, which a successor must be able to take.
  auto ready = receive(k.sock_.get(), kAnswerMs);
  if (!ready || ready->record.kind != static_cast<std::uint16_t>(Kind::Ready)) {
    k.retire();
    return ready ? Error(ErrorCode::ProtocolError, "mq keeper: no Ready") : ready.error();
  }
  return k;
}

Result<void> MqKeeper::put(const Record& record, int segment_fd) {
  Record r = record;
  r.magic = keep_wire::kMagic;
  r.version = keep_wire::kVersion;
  r.kind = static_cast<std::uint16_t>(Kind::Put);
  const std::array<int, 1> fds{segment_fd};
  auto s = send_within(sock_.get(), r, fds, 1s);
  if (!s) sock_.reset();
  return s;
}

Result<void> MqKeeper::drop(std::uint64_t queue_id) {
  auto s = send_within(sock_.get(), keep_wire::make(Kind::Drop, queue_id), {}, 1s);
  if (!s) sock_.reset();
  return s;
}

void MqKeeper::retire() noexcept {
  sock_.reset();
  if (!path_.empty()) platform::unlink_quietly(path_);
  path_.clear();
}

TakeOver take_over(const std::string& dir) {
  TakeOver t;
  std::vector<std::string> sockets;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("keeper-") && name.ends_with(".sock")) sockets.push_back(e.path());
  }
  for (const std::string& path : sockets) {
    auto conn = platform::connect_seqpacket(path);
    if (!conn) {
      t.notes.push_back("removed the socket of a keeper that is gone: " + path);
      platform::unlink_quietly(path);
      continue;
    }
    auto cred = platform::peer_cred(conn->get());
    if (!cred || cred->uid != ::geteuid()) {
      t.notes.push_back("ignored a keeper socket not served by this user: " + path);
      continue;
    }
    const Record ask = keep_wire::make(Kind::HandOver);
    if (!platform::send_packet(conn->get(), bytes_of(ask), {}, /*nonblocking=*/false)) {
      t.notes.push_back("a keeper hung up before handing its queues over: " + path);
      continue;
    }
    bool complete = false;
    for (;;) {
      auto r = receive(conn->get(), kAnswerMs);
      if (!r) {
        t.notes.push_back("keeper " + path + " stopped handing over (" + r.error().message() +
                          "): it keeps what it did not send");
        break;
      }
      if (r->record.kind == static_cast<std::uint16_t>(Kind::End)) {
        complete = true;
        break;
      }
      if (r->record.kind != static_cast<std::uint16_t>(Kind::Put)) continue;
      t.queues.push_back({r->record, std::move(r->fd)});
    }
    if (complete) t.keepers.push_back(std::move(*conn));
  }
  return t;
}

void finish_take_over(TakeOver& t) noexcept {
  const Record done = keep_wire::make(Kind::Done);
  for (sys::UniqueFd& k : t.keepers) {
    (void)platform::send_packet(k.get(), bytes_of(done), {}, /*nonblocking=*/true);
    k.reset();
  }
  t.keepers.clear();
}

// ------------------------------------------------------------ the keeper process

namespace {

class Keeper {
 public:
  Keeper(std::string path, sys::UniqueFd broker, sys::UniqueFd listen)
      : path_(std::move(path)), broker_(std::move(broker)), listen_(std::move(listen)) {}

  int run() {
    auto epoll = platform::Epoll::create();
    if (!epoll) return 1;
    if (!epoll->add(broker_.get(), EPOLLIN, 0) || !epoll->add(listen_.get(), EPOLLIN, 1)) {
      return 1;
    }
    if (!send_within(broker_.get(), keep_wire::make(Kind::Ready), {},
                     std::chrono::milliseconds(kAnswerMs))) {
      return 1;
    }
    std::array<platform::Epoll::Event, 4> events{};
    for (;;) {
      auto n = epoll->wait(events, 1000);
      if (!n) return 1;
      for (std::size_t i = 0; i < *n; ++i) {
        if (events[i].data == 0) {
          if (!read_broker()) {
            epoll->remove(broker_.get());
            broker_.reset();
          }
        } else if (serve_all()) {
          platform::unlink_quietly(path_);
          return 0;  // handed over
        }
      }
      if (!broker_.valid() && kept_.empty()) break;
      std::error_code ec;
      if (!std::filesystem::exists(path_, ec) && !ec) return 0;  // runtime directory gone
    }
    platform::unlink_quietly(path_);
    return 0;
  }

 private:
  // Applies what the broker sent; false once it is gone.
  bool read_broker() {
    for (;;) {
      auto r = receive(broker_.get(), 0);
      if (!r)
        return r.error().code() == ErrorCode::WouldBlock ||
               r.error().code() == ErrorCode::ProtocolError;
      const std::uint64_t id = r->record.queue_id;
      if (r->record.kind == static_cast<std::uint16_t>(Kind::Put)) {
        kept_[id] = std::move(*r);
      } else if (r->record.kind == static_cast<std::uint16_t>(Kind::Drop)) {
        kept_.erase(id);
      }
    }
  }

  // Serves every pending connection; true once one took the queues (Done).
  bool serve_all() {
    for (;;) {
      auto conn = platform::accept(listen_.get());
      if (!conn) return false;
      if (serve(conn->get())) return true;
    }
  }

  bool serve(int conn) {
    auto cred = platform::peer_cred(conn);
    if (!cred || cred->uid != ::getuid()) return false;
    auto ask = receive(conn, kAnswerMs);
    if (!ask || ask->record.kind != static_cast<std::uint16_t>(Kind::HandOver)) return false;
    // The asker holds the broker's lock, so this keeper's broker is gone or going; what it
    // sent before it went is read first. A broker that stays is not handed over from.
    while (broker_.valid()) {
      auto readable = sys::poll_readable(broker_.get(), 2000);
      if (!readable || !*readable) return false;
      if (!read_broker()) broker_.reset();
    }
    for (const auto& [id, k] : kept_) {
      const std::array<int, 1> fds{k.fd.get()};
      if (!send_within(conn, k.record, fds, std::chrono::milliseconds(kAnswerMs))) return false;
    }
    if (!send_within(conn, keep_wire::make(Kind::End), {}, std::chrono::milliseconds(kAnswerMs))) {
      return false;
    }
    auto done = receive(conn, kAnswerMs * 2);
    return done && done->record.kind == static_cast<std::uint16_t>(Kind::Done);
  }

  std::string path_;
  sys::UniqueFd broker_;
  sys::UniqueFd listen_;
  std::map<std::uint64_t, Received> kept_;
};

}  // namespace

int run_mq_keeper(const std::string& socket_path) {
  // A terminal's hang-up or ^C must not drop the queues; SIGTERM does (the way to discard
  // them all while no broker runs).
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  Keeper k(socket_path, sys::UniqueFd(kKeeperBrokerFd), sys::UniqueFd(kKeeperListenFd));
  return k.run();
}

}  // namespace vipc::broker
