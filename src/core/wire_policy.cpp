#include "core/wire_policy.hpp"

#include <fcntl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "core/wire.hpp"
#include "vipc/capability.hpp"

namespace vipc::wire {
namespace {

constexpr std::uint32_t kIdLimit = 1u << 31;  // ids are in [0, 2^31), as in the file
constexpr int kRuleSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

Error invalid(const char* context) noexcept { return Error(ErrorCode::InvalidArgument, context); }

constexpr std::size_t padded(std::size_t n) noexcept { return (n + 3) & ~std::size_t{3}; }

bool ids_ok(const std::vector<std::uint32_t>& ids) noexcept {
  return std::all_of(ids.begin(), ids.end(), [](std::uint32_t v) { return v < kIdLimit; });
}

bool path_ok(std::string_view p) noexcept {
  return !p.empty() && p.front() == '/' && p.size() <= kRulePathMax &&
         p.find('\0') == std::string_view::npos;
}

bool requirement_ok(const RuleRequirement& r) noexcept {
  return valid_name(r.object) && r.rights != 0 &&
         (r.rights & ~static_cast<std::uint32_t>(Rights::All)) == 0;
}

// Reads from a byte span front to back; every read is bounds-checked.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> b) noexcept : b_(b) {}
  bool u32(std::uint32_t& v) noexcept {
    if (b_.size() - at_ < 4) return false;
    std::memcpy(&v, b_.data() + at_, 4);
    at_ += 4;
    return true;
  }
  // `n` bytes and the zeros that pad them to a multiple of 4.
  bool text(std::size_t n, std::string& out) {
    const std::size_t total = padded(n);
    if (b_.size() - at_ < total) return false;
    out.assign(reinterpret_cast<const char*>(b_.data() + at_), n);
    for (std::size_t i = n; i < total; ++i) {
      if (b_[at_ + i] != std::byte{0}) return false;
    }
    at_ += total;
    return true;
  }
  [[nodiscard]] bool done() const noexcept { return at_ == b_.size(); }

 private:
  std::span<const std::byte> b_;
  std::size_t at_ = 0;
};

void put_u32(std::vector<std::byte>& out, std::uint32_t v) {
  const auto at = out.size();
  out.resize(at + 4);
  std::memcpy(out.data() + at, &v, 4);
}

void put_text(std::vector<std::byte>& out, std::string_view s) {
  const auto at = out.size();
  out.resize(at + padded(s.size()), std::byte{0});
  std::memcpy(out.data() + at, s.data(), s.size());
}

}  // namespace

Result<void> check_rule_name(std::string_view name) noexcept {
  const auto star = name.find('*');
  if (!valid_name(name) || (star != std::string_view::npos && star != name.size() - 1)) {
    return invalid(ctx::kRuleName);
  }
  return {};
}

Result<void> check_rule(const RuleData& r) noexcept {
  for (std::size_t n :
       {r.uids.size(), r.gids.size(), r.pids.size(), r.executables.size(), r.requirements.size()}) {
    if (n > kRuleListMax) return invalid(ctx::kRuleTooLarge);
  }
  if (!ids_ok(r.uids)) return invalid(ctx::kRuleUids);
  if (!ids_ok(r.gids)) return invalid(ctx::kRuleGids);
  if (!ids_ok(r.pids)) return invalid(ctx::kRulePids);
  if (!std::all_of(r.executables.begin(), r.executables.end(),
                   [](const std::string& p) { return path_ok(p); })) {
    return invalid(ctx::kRuleExecutables);
  }
  if (!std::all_of(r.requirements.begin(), r.requirements.end(), requirement_ok)) {
    return invalid(ctx::kRuleRequires);
  }
  std::size_t size = sizeof(RuleHeader) + 4 * (r.uids.size() + r.gids.size() + r.pids.size());
  for (const auto& e : r.executables) size += 4 + padded(e.size());
  for (const auto& q : r.requirements) size += 8 + padded(q.object.size());
  if (size > kPolicyRuleMax) return invalid(ctx::kRuleTooLarge);
  return {};
}

std::vector<std::byte> encode_rule(const RuleData& r) {
  std::vector<std::byte> out;
  const RuleHeader h{kRuleMagic,
                     kRuleVersion,
                     static_cast<std::uint32_t>(r.uids.size()),
                     static_cast<std::uint32_t>(r.gids.size()),
                     static_cast<std::uint32_t>(r.pids.size()),
                     static_cast<std::uint32_t>(r.executables.size()),
                     static_cast<std::uint32_t>(r.requirements.size()),
                     r.audit ? kRuleAudit : 0u};
  out.resize(sizeof h);
  std::memcpy(out.data(), &h, sizeof h);
  for (const auto* list : {&r.uids, &r.gids, &r.pids}) {
    for (std::uint32_t v : *list) put_u32(out, v);
  }
  for (const std::string& e : r.executables) {
    put_u32(out, static_cast<std::uint32_t>(e.size()));
    put_text(out, e);
  }
  for (const RuleRequirement& q : r.requirements) {
    put_u32(out, q.rights);
    put_u32(out, static_cast<std::uint32_t>(q.object.size()));
    put_text(out, q.object);
  }
  return out;
}

Result<RuleData> decode_rule(std::span<const std::byte> bytes) {
  if (bytes.size() < sizeof(RuleHeader) || bytes.size() > kPolicyRuleMax) {
    return invalid(ctx::kRuleEncoding);
  }
  RuleHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  if (h.magic != kRuleMagic || h.version != kRuleVersion || (h.flags & ~kRuleAudit) != 0) {
    return invalid(ctx::kRuleEncoding);
  }
  for (std::uint32_t n : {h.uid_count, h.gid_count, h.pid_count, h.exe_count, h.req_count}) {
    if (n > kRuleListMax) return invalid(ctx::kRuleTooLarge);
  }
  Reader in(bytes.subspan(sizeof h));
  RuleData r;
  r.audit = (h.flags & kRuleAudit) != 0;
  const std::pair<std::uint32_t, std::vector<std::uint32_t>*> lists[] = {
      {h.uid_count, &r.uids}, {h.gid_count, &r.gids}, {h.pid_count, &r.pids}};
  for (const auto& [count, list] : lists) {
    list->resize(count);
    for (std::uint32_t& v : *list) {
      if (!in.u32(v)) return invalid(ctx::kRuleEncoding);
    }
  }
  r.executables.resize(h.exe_count);
  for (std::string& e : r.executables) {
    std::uint32_t len = 0;
    if (!in.u32(len) || len > kRulePathMax || !in.text(len, e)) return invalid(ctx::kRuleEncoding);
  }
  r.requirements.resize(h.req_count);
  for (RuleRequirement& q : r.requirements) {
    std::uint32_t len = 0;
    if (!in.u32(q.rights) || !in.u32(len) || len > kNameMax || !in.text(len, q.object)) {
      return invalid(ctx::kRuleEncoding);
    }
  }
  if (!in.done()) return invalid(ctx::kRuleEncoding);
  VIPC_TRY(check_rule(r));
  return r;
}

Result<sys::UniqueFd> rule_to_memfd(std::span<const std::byte> bytes) {
  auto fd = sys::memfd_create("vipc-rule");
  if (!fd) return fd.error();
  VIPC_TRY(sys::ftruncate(fd->get(), bytes.size()));
  if (!bytes.empty()) {
    auto m = sys::map_shared(fd->get(), bytes.size(), PROT_READ | PROT_WRITE);
    if (!m) return m.error();
    std::memcpy(m->data(), bytes.data(), bytes.size());
  }
  VIPC_TRY(sys::add_seals(fd->get(), kRuleSeals | F_SEAL_SEAL));
  return std::move(*fd);
}

Result<std::vector<std::byte>> rule_from_memfd(int fd, std::uint32_t length) {
  // A memfd's seals are what make the mapping below safe: get_seals fails on anything
  // but shmem, and these seals fix its size and contents.
  auto seals = sys::get_seals(fd);
  if (!seals || (*seals & kRuleSeals) != kRuleSeals) return invalid(ctx::kRuleDescriptor);
  auto size = sys::file_size(fd);
  if (!size || *size != length || length == 0 || length > kPolicyRuleMax) {
    return invalid(ctx::kRuleDescriptor);
  }
  auto m = sys::map_shared(fd, length, PROT_READ);
  if (!m) return m.error();
  std::vector<std::byte> out(length);
  std::memcpy(out.data(), m->data(), length);
  return out;
}

}  // namespace vipc::wire
