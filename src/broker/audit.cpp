#include "broker/audit.hpp"

#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace vipc::broker {
namespace {

using nlohmann::json;

constexpr char kHex[] = "0123456789abcdef";
// How long a record may wait for the writer when nothing hurries it (flush, a half-full
// buffer, the end).
constexpr std::chrono::milliseconds kWriterPeriod{20};

std::uint64_t realtime_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

json to_json(const AuditEvent& e) {
  json j;
  j["ts_ns"] = e.time_ns;
  j["event"] = e.event;
  j["outcome"] = e.outcome;
  if (e.reason != nullptr) j["reason"] = e.reason;
  if (e.client != 0) j["client"] = e.client;
  if (e.pid != 0) j["pid"] = e.pid;
  if (e.client != 0 || e.pid != 0) {
    j["uid"] = e.uid;
    j["gid"] = e.gid;
  }
  if (e.object != 0) j["object"] = e.object;
  if (!e.name.empty()) j["name"] = e.name;
  if (e.target != 0) j["target"] = e.target;
  if (e.rights != 0) j["rights"] = e.rights;
  if (e.count != 0) j["count"] = e.count;
  if (e.duration_ns != 0) j["duration_ns"] = e.duration_ns;
  return j;
}

// The canonical text a record's hash covers: its JSON, keys sorted, without "hash".
std::string canonical(json j) {
  j.erase("hash");
  return j.dump();
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  std::string out(static_cast<std::size_t>(len) * 2, '0');
  for (unsigned int i = 0; i < len; ++i) {
    out[2 * i] = kHex[md[i] >> 4];
    out[2 * i + 1] = kHex[md[i] & 15];
  }
  return out;
}

Result<std::unique_ptr<AuditLog>> AuditLog::open(const AuditOptions& options,
                                                 const AuditChain& resume) {
  if (options.path.empty() || options.buffer == 0 || options.max_bytes == 0) {
    return Error(ErrorCode::InvalidArgument, "audit: path, buffer and max_bytes must be set");
  }
  std::unique_ptr<AuditLog> log(new AuditLog(options));
  // Resume the chain from the file's last record, if there is one.
  {
    std::ifstream in(options.path);
    std::string line, last;
    while (std::getline(in, line)) {
      if (!line.empty()) last = line;
    }
    if (!last.empty()) {
      const json j = json::parse(last, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("seq") && j["seq"].is_number_unsigned() &&
          j.contains("hash") && j["hash"].is_string()) {
        log->seq_ = j["seq"].get<std::uint64_t>() + 1;
        log->prev_ = j["hash"].get<std::string>();
      } else {
        return Error(ErrorCode::Corrupted, "audit: the last line of the file is not a record");
      }
    } else {
      log->seq_ = resume.next_seq;
      log->prev_ = resume.prev;
    }
    std::error_code ec;
    const auto size = std::filesystem::file_size(options.path, ec);
    log->file_bytes_ = ec ? 0 : size;
  }
  {
    std::ofstream probe(options.path, std::ios::app);
    if (!probe) return Error(ErrorCode::SystemError, "audit: cannot open the file", EACCES);
  }
  log->pending_.reserve(options.buffer);
  // The writer takes no signals: vipcd's arrive through its signalfd, which works only
  // while every thread blocks them (a thread made before they were blocked would take
  // SIGTERM's default action).
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  log->thread_ = std::thread([p = log.get()] { p->run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  AuditEvent start;
  start.event = "audit_start";
  start.pid = ::getpid();
  log->record(std::move(start));
  return log;
}

AuditLog::~AuditLog() { (void)close(); }

AuditChain AuditLog::close() {
  {
    const std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    closed_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  // The writer has stopped: its chain state is ours to read.
  return AuditChain{seq_, prev_};
}

Result<void> AuditLog::reconfigure(const AuditOptions& options) {
  if (options.path != path_ || options.buffer == 0 || options.max_bytes == 0) {
    return Error(ErrorCode::InvalidArgument, "audit: reconfigure keeps the path; sizes not zero");
  }
  const std::lock_guard<std::mutex> lk(mu_);
  buffer_ = options.buffer;
  max_bytes_ = options.max_bytes;
  keep_ = options.keep;
  return {};
}

bool AuditLog::record(AuditEvent event) noexcept {
  if (event.time_ns == 0) event.time_ns = realtime_ns();
  {
    const std::lock_guard<std::mutex> lk(mu_);
    if (closed_ || pending_.size() >= buffer_) {
      ++lost_;
      return false;
    }
    try {
      pending_.push_back(std::move(event));  // capacity reserved: no allocation of the vector
    } catch (...) {
      ++lost_;
      return false;
    }
    ++accepted_;
    // The writer wakes by itself every kWriterPeriod; only a filling buffer wakes it
    // early, so a burst of control operations costs no context switch each.
    if (pending_.size() < buffer_ / 2) return true;
  }
  cv_.notify_one();
  return true;
}

void AuditLog::flush() {
  std::unique_lock<std::mutex> lk(mu_);
  const std::uint64_t target = accepted_;
  cv_.notify_one();
  idle_cv_.wait(lk, [&] { return done_ >= target; });
}

AuditStats AuditLog::stats() const {
  const std::lock_guard<std::mutex> lk(mu_);
  AuditStats s = written_;
  s.accepted = accepted_;
  s.lost = lost_;
  return s;
}

void AuditLog::run() {
  std::vector<AuditEvent> batch;
  for (;;) {
    std::uint64_t lost_now = 0;
    bool stop = false;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait_for(lk, kWriterPeriod);
      if (pending_.empty() && !stopping_) continue;
      batch.swap(pending_);
      // Best effort: record() copes with a push_back that allocates (or fails).
      try {
        pending_.reserve(buffer_);
      } catch (...) {
      }
      writer_max_bytes_ = max_bytes_;
      writer_keep_ = keep_;
      lost_now = lost_;
      stop = stopping_;
    }
    write_batch(batch, lost_now);
    {
      const std::lock_guard<std::mutex> lk(mu_);
      done_ += batch.size();
    }
    batch.clear();
    idle_cv_.notify_all();
    if (stop) {
      const std::lock_guard<std::mutex> lk(mu_);
      if (pending_.empty()) return;
    }
  }
}

void AuditLog::write_batch(std::vector<AuditEvent>& batch, std::uint64_t lost_now) {
  std::string out;
  auto append = [&](json j) {
    j["seq"] = seq_;
    j["prev"] = prev_;
    const std::string body = j.dump();
    const std::string hash = sha256_hex(body);
    j["hash"] = hash;
    std::string line = j.dump();
    line += '\n';
    if (file_bytes_ + out.size() + line.size() > writer_max_bytes_ &&
        file_bytes_ + out.size() > 0) {
      emit(out);
      out.clear();
      // Rotate: path.keep is dropped, path.i -> path.i+1, path -> path.1.
      std::error_code ec;
      const std::string& p = path_;
      if (writer_keep_ == 0) {
        std::filesystem::remove(p, ec);
      } else {
        for (std::uint32_t i = writer_keep_; i > 1; --i) {
          std::filesystem::rename(p + "." + std::to_string(i - 1), p + "." + std::to_string(i), ec);
        }
        std::filesystem::rename(p, p + ".1", ec);
      }
      file_bytes_ = 0;
      const std::lock_guard<std::mutex> lk(mu_);
      ++written_.rotations;
    }
    out += line;
    prev_ = hash;
    ++seq_;
  };
  std::uint64_t written = 0;
  if (lost_now > lost_reported_) {
    json j;
    j["ts_ns"] = realtime_ns();
    j["event"] = "lost";
    j["outcome"] = "ok";
    j["count"] = lost_now - lost_reported_;
    append(std::move(j));
    lost_reported_ = lost_now;
    ++written;
  }
  for (const AuditEvent& e : batch) {
    append(to_json(e));
    ++written;
  }
  emit(out);
  const std::lock_guard<std::mutex> lk(mu_);
  written_.written += written;
}

void AuditLog::emit(const std::string& text) {
  if (text.empty()) return;
  std::ofstream f(path_, std::ios::app | std::ios::binary);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.flush();
  if (!f) {
    const std::lock_guard<std::mutex> lk(mu_);
    ++written_.write_errors;
    return;
  }
  file_bytes_ += text.size();
}

AuditVerifyResult verify_audit_stream(std::istream& in, AuditVerifyResult r) {
  std::string line;
  std::uint64_t n = 0;
  auto fail = [&](std::string why) {
    r.ok = false;
    r.bad_line = n;
    r.reason = std::move(why);
    return r;
  };
  while (std::getline(in, line)) {
    ++n;
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return fail("not a JSON object");
    if (!j.contains("hash") || !j["hash"].is_string() || !j.contains("prev") ||
        !j["prev"].is_string() || !j.contains("seq") || !j["seq"].is_number_unsigned()) {
      return fail("missing seq, prev or hash");
    }
    const std::string hash = j["hash"].get<std::string>();
    if (sha256_hex(canonical(j)) != hash) return fail("hash does not match the record (edited)");
    const std::uint64_t seq = j["seq"].get<std::uint64_t>();
    const std::string prev = j["prev"].get<std::string>();
    if (r.started) {
      if (seq != r.last_seq + 1) {
        return fail("seq " + std::to_string(seq) + " after " + std::to_string(r.last_seq) +
                    " (record removed, inserted or reordered)");
      }
      if (prev != r.last_hash) return fail("prev is not the hash of the record before");
    }
    r.started = true;
    r.last_seq = seq;
    r.last_hash = hash;
    ++r.records;
  }
  return r;
}

AuditVerifyResult verify_audit(const std::vector<std::string>& paths) {
  AuditVerifyResult r;
  for (const std::string& p : paths) {
    std::ifstream in(p);
    if (!in) {
      r.ok = false;
      r.reason = p + ": cannot be read";
      return r;
    }
    r = verify_audit_stream(in, r);
    if (!r.ok) {
      r.reason = p + ":" + std::to_string(r.bad_line) + ": " + r.reason;
      return r;
    }
  }
  return r;
}

}  // namespace vipc::broker
