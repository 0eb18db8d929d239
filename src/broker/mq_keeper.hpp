// vipc::broker::MqKeeper: keeps the POSIX message queues of a broker alive across a broker
// restart, however the broker ended (SIGTERM, kill -9) (docs/posix.md, "Queues across a
// broker restart").
//
// Guarantees
// - A queue's memory is a sealed memfd (no holder can shrink or grow it), which no file
//   system can name; so another process holds it: the keeper (`vipcd --mq-keeper PATH`),
//   spawned detached (its own session, neither the broker's child nor in its process
//   group) the first time the broker has a queue; the broker waits for its Ready, so
//   that no copy of the broker's descriptors (its lock file's) outlives the broker in a
//   keeper that has not started yet. The broker tells its keeper of every
//   queue it creates (Put: the registry entry and the segment's descriptor) and of every
//   unlink (Drop). The keeper holds what it was told, reads nothing from the segments and
//   never answers its broker.
// - A broker that ends closes its end of the pair; the keeper keeps the queues. The next
//   broker of the runtime directory (holding the socket's lock, so the old one is gone)
//   takes them over (take_over): it connects to every keeper socket in `<runtime dir>/mq/`,
//   checks that the keeper runs as its own uid, asks for the queues (HandOver) and
//   receives every entry with its descriptor (Put ... End). Only once its own keeper holds
//   them does it tell the old keeper Done; a broker killed before that leaves the old
//   keeper as it was, so nothing is lost.
// - A keeper exits when it has handed its queues over (Done), when it holds none and its
//   broker is gone, or when its socket file disappears (the runtime directory was
//   removed, as at logout): queues live until unlinked or until the runtime directory
//   goes, as the kernel's live until unlinked or until reboot.
//
// Caveats: the records come from a process of the broker's own uid and are checked for
// shape only; the segments they carry were written by clients and are validated by the
// registry (MqRegistry::persist) before anything is adopted. A keeper killed (SIGTERM,
// SIGKILL) takes its queues with it: the broker then spawns another and gives it every
// queue again at its next create or unlink, but queues of a broker that is down are gone.
//
//   auto keeper = MqKeeper::spawn("/usr/bin/vipcd", dir).value();
//   (void)keeper.put(record, segment_fd);
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/sys.hpp"
#include "core/wire_mq.hpp"
#include "vipc/result.hpp"

namespace vipc::broker {

namespace keep_wire {

inline constexpr std::uint32_t kMagic = 0x4b51'4d56;  // "VMQK" in memory order
inline constexpr std::uint16_t kVersion = 1;

enum class Kind : std::uint16_t {
  Put = 1,       // broker -> keeper, keeper -> new broker: one queue, its segment attached
  Drop = 2,      // broker -> keeper: the queue `queue_id` was unlinked
  HandOver = 3,  // new broker -> keeper: send me every queue
  End = 4,       // keeper -> new broker: that was every queue
  Done = 5,      // new broker -> keeper: they are safe elsewhere, exit
  Ready = 6,     // keeper -> its broker, once: started (it holds none of the broker's
                 // descriptors any more, the lock file's included)
};

// One packet, the same for every kind (fields a kind does not use are zero).
//
//   0       4     6      8          16    20    24     28         32             36
//   | magic | ver | kind | queue id | uid | gid | mode | max msgs | message size | reserved
//   40: name[256] (NUL-terminated, without the leading '/')
struct Record {
  std::uint32_t magic;
  std::uint16_t version;
  std::uint16_t kind;
  std::uint64_t queue_id;
  std::uint32_t uid;
  std::uint32_t gid;
  std::uint32_t mode;
  std::uint32_t max_messages;
  std::uint32_t message_size;
  std::uint32_t reserved;
  wire::MqName name;
};
static_assert(sizeof(Record) == 296);
static_assert(offsetof(Record, kind) == 6);
static_assert(offsetof(Record, queue_id) == 8);
static_assert(offsetof(Record, uid) == 16);
static_assert(offsetof(Record, mode) == 24);
static_assert(offsetof(Record, max_messages) == 28);
static_assert(offsetof(Record, message_size) == 32);
static_assert(offsetof(Record, name) == 40);

[[nodiscard]] Record make(Kind kind, std::uint64_t queue_id = 0) noexcept;
// Whether `bytes` is one well-formed record (size, magic, version, a known kind, a
// NUL-terminated name); copies it into *out.
[[nodiscard]] bool parse(const std::byte* bytes, std::size_t size, Record* out) noexcept;

}  // namespace keep_wire

// The broker's end of its keeper.
class MqKeeper {
 public:
  // Spawns `exe --mq-keeper <dir>/keeper-<pid>-<n>.sock` (exe: vipcd) with the pair's other
  // end and the listening socket; dir must exist and be private.
  [[nodiscard]] static Result<MqKeeper> spawn(const std::string& exe, const std::string& dir);
  MqKeeper() noexcept = default;

  [[nodiscard]] bool valid() const noexcept { return sock_.valid(); }
  // ChannelClosed when the keeper is gone; Timeout when it does not read for a second.
  [[nodiscard]] Result<void> put(const keep_wire::Record& record, int segment_fd);
  [[nodiscard]] Result<void> drop(std::uint64_t queue_id);
  // Lets this keeper go (before a new one replaces it): closes the pair and removes its
  // socket file, so that it exits within a second even if it still holds queues.
  void retire() noexcept;

 private:
  sys::UniqueFd sock_;
  std::string path_;
};

// What the keepers of earlier brokers held.
struct KeptQueue {
  keep_wire::Record record;
  sys::UniqueFd segment;
};
struct TakeOver {
  std::vector<KeptQueue> queues;
  std::vector<sys::UniqueFd> keepers;  // keepers that sent everything: told Done by finish
  std::vector<std::string> notes;      // what was skipped or cleaned up, for the log
};
// Asks every keeper whose socket is in `dir` for its queues (keepers of another uid are
// ignored, stale sockets removed). Bounded: a keeper that stays silent for 5 s is skipped.
[[nodiscard]] TakeOver take_over(const std::string& dir);
// Tells the old keepers that their queues are held elsewhere; they exit.
void finish_take_over(TakeOver& t) noexcept;

// The keeper process (`vipcd --mq-keeper PATH`): descriptor 3 is its broker's end of the
// pair, 4 the socket listening at PATH. Returns the exit status.
int run_mq_keeper(const std::string& socket_path);

}  // namespace vipc::broker
