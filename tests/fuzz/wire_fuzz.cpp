// libFuzzer target: the control-protocol decoders must never crash, read out of bounds
// or accept a message (or a channel rule) that does not re-encode to the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <variant>
#include <vector>

#include "core/wire.hpp"
#include "core/wire_mq.hpp"
#include "core/wire_policy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace vipc::wire;
  // The first byte says how many descriptors "arrived"; the rest is the packet.
  if (size == 0) return 0;
  const std::size_t fds = data[0] % 6;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1), size - 1);

  if (auto req = decode_request(bytes, fds)) {
    // A request that decodes re-encodes to exactly the same bytes.
    const Packet p = std::visit(
        [&](const auto& body) {
          return encode_request(req->header.request_id, body, req->header.fd_count);
        },
        req->body);
    if (p.size != bytes.size() || std::memcmp(p.bytes.data(), bytes.data(), p.size) != 0) {
      std::abort();
    }
  }
  if (auto rep = decode_reply(bytes, fds)) {
    if (rep->ok()) {
      const Packet p = std::visit(
          [&](const auto& body) {
            return encode_reply(rep->header.request_id, body, rep->header.fd_count);
          },
          rep->body);
      if (p.size != bytes.size() || std::memcmp(p.bytes.data(), bytes.data(), p.size) != 0) {
        std::abort();
      }
    } else if (rep->error.context() == nullptr) {
      std::abort();
    }
  }
  // The POSIX queue opcodes: the same properties.
  if (auto req = decode_mq_request(bytes, fds)) {
    const Packet p = encode_mq_request(req->header.request_id, req->body);
    if (p.size != bytes.size() || std::memcmp(p.bytes.data(), bytes.data(), p.size) != 0) {
      std::abort();
    }
  }
  if (auto rep = decode_mq_reply(bytes, fds)) {
    if (rep->ok()) {
      const Packet p = encode_mq_reply(rep->header.request_id, rep->body);
      if (p.size != bytes.size() || std::memcmp(p.bytes.data(), bytes.data(), p.size) != 0) {
        std::abort();
      }
    }
  }
  (void)peek_echo(bytes);
  // A channel rule (ChannelPolicy's memfd) that decodes re-encodes to the same bytes.
  if (auto rule = decode_rule(bytes)) {
    const std::vector<std::byte> again = encode_rule(*rule);
    if (again.size() != bytes.size() ||
        std::memcmp(again.data(), bytes.data(), again.size()) != 0) {
      std::abort();
    }
  }
  return 0;
}
