// The buffer opcodes of the control protocol (CreateBuffer, MapBuffer, TransferBuffer,
// ClaimBuffer) and the LargeMessage descriptor a receiver parses from a ring slot.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <vector>

#include "core/buffer_descriptor.hpp"
#include "core/wire.hpp"

namespace vipc::wire {
namespace {

template <class Body>
Result<DecodedRequest> decode(const Body& body) {
  const Packet p = encode_request(9, body);
  return decode_request(p.view(), 0);
}

BufferRecord valid_record() {
  return BufferRecord{7, 4096, static_cast<std::uint16_t>(ObjectKind::Buffer), 0, 0, kNoNumaNode,
                      1, 0};
}

TEST(BufferWireTest, RequestsRoundTrip) {
  auto c = decode(CreateBufferRequest{static_cast<std::uint16_t>(ObjectKind::Region),
                                      kBufferHugePages, kNoNumaNode, 0, 1 << 20});
  ASSERT_TRUE(c.ok()) << c.error().message();
  EXPECT_EQ(c->header.opcode, static_cast<std::uint16_t>(Opcode::CreateBuffer));
  EXPECT_EQ(std::get<CreateBufferRequest>(c->body).size, 1u << 20);
  auto t = decode(TransferBufferRequest{CapabilityRef{5, 1, 0}, 48, 1, 0, 0, 0, 3});
  ASSERT_TRUE(t.ok()) << t.error().message();
  EXPECT_EQ(std::get<TransferBufferRequest>(t->body).target_client, 3u);
  EXPECT_TRUE(decode(MapBufferRequest{CapabilityRef{5, 1, 0}}).ok());
  EXPECT_TRUE(decode(ClaimBufferRequest{77}).ok());
}

TEST(BufferWireTest, BadBufferRequestsAreRefused) {
  // Only Buffer and Region are buffer kinds.
  auto k = decode(
      CreateBufferRequest{static_cast<std::uint16_t>(ObjectKind::Channel), 0, kNoNumaNode, 0, 64});
  EXPECT_EQ(k.error().context(), std::string_view(ctx::kBadEnum));
  EXPECT_EQ(decode(CreateBufferRequest{7, 0x80, kNoNumaNode, 0, 64}).error().context(),
            std::string_view(ctx::kBadFlags));
  EXPECT_EQ(decode(CreateBufferRequest{7, 0, kNoNumaNode, 1, 64}).error().context(),
            std::string_view(ctx::kBadReserved));
  // Modes 1..3 only; exactly one target; reserved fields zero.
  for (std::uint16_t mode : {std::uint16_t{0}, std::uint16_t{4}, std::uint16_t{0xffff}}) {
    EXPECT_EQ(decode(TransferBufferRequest{CapabilityRef{5, 1, 0}, 48, mode, 0, 0, 0, 3})
                  .error()
                  .context(),
              std::string_view(ctx::kBadEnum));
  }
  EXPECT_EQ(
      decode(TransferBufferRequest{CapabilityRef{5, 1, 0}, 48, 1, 0, 9, 0, 3}).error().context(),
      std::string_view(ctx::kBadTarget));
  EXPECT_EQ(
      decode(TransferBufferRequest{CapabilityRef{5, 1, 0}, 48, 1, 0, 0, 0, 0}).error().context(),
      std::string_view(ctx::kBadTarget));
  EXPECT_EQ(
      decode(TransferBufferRequest{CapabilityRef{5, 1, 0}, 48, 1, 1, 0, 0, 3}).error().context(),
      std::string_view(ctx::kBadReserved));
  EXPECT_EQ(decode(TransferBufferRequest{CapabilityRef{5, 1, 0}, 1u << 9, 1, 0, 0, 0, 3})
                .error()
                .context(),
            std::string_view(ctx::kBadRights));
  // CreateObject cannot make a Buffer: it has no size.
  CreateRequest r{};
  r.kind = static_cast<std::uint16_t>(ObjectKind::Buffer);
  r.capacity = 1;
  r.max_message_size = 1;
  r.name = make_name("b");
  EXPECT_EQ(decode(r).error().context(), std::string_view(ctx::kBadEnum));
  // Kind 6 is not a kind.
  r.kind = 6;
  EXPECT_EQ(decode(r).error().context(), std::string_view(ctx::kBadEnum));
}

TEST(BufferWireTest, RepliesCarryExactlyOneDescriptor) {
  const CreateBufferReply body{CapabilityRecord{1, 7, 0x70, 1}, valid_record()};
  const Packet p = encode_reply(4, body, 1);
  EXPECT_TRUE(decode_reply(p.view(), 1).ok());
  EXPECT_EQ(decode_reply(p.view(), 0).error().context(), std::string_view(ctx::kBadFdCount));
  const Packet none = encode_reply(4, body, 0);
  EXPECT_EQ(decode_reply(none.view(), 0).error().context(), std::string_view(ctx::kBadFdCount));
  const Packet t = encode_reply(4, TransferBufferReply{99, valid_record()}, 0);
  EXPECT_TRUE(decode_reply(t.view(), 0).ok());
}

TEST(BufferWireTest, BadBufferRecordsAreRefused) {
  BufferRecord zero = valid_record();
  zero.size = 0;
  BufferRecord huge = valid_record();
  huge.size = kBufferSizeMax + 1;
  BufferRecord mode = valid_record();
  mode.mode = 4;
  BufferRecord flags = valid_record();
  flags.flags = 0x100;
  BufferRecord kind = valid_record();
  kind.kind = static_cast<std::uint16_t>(ObjectKind::Ring);
  for (const BufferRecord& r : {zero, huge, mode, flags, kind}) {
    const Packet p = encode_reply(4, MapBufferReply{r}, 1);
    EXPECT_FALSE(decode_reply(p.view(), 1).ok());
  }
}

SmallMessage descriptor_message(const layout::BufferDescriptor& d) {
  SmallMessage m(0, &d, sizeof d);
  m.cap_count = 1;
  m.caps[0] = CapabilityHandle{42};
  return m;
}

TEST(BufferDescriptorTest, ParsesOnlyWellFormedDescriptors) {
  const layout::BufferDescriptor good{
      layout::kBufferDescriptorMagic, layout::kBufferDescriptorVersion, 2, 0, 4096, 4096};
  auto parsed = layout::parse_descriptor(descriptor_message(good));
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->handle, 42u);
  EXPECT_EQ(parsed->d.length, 4096u);
  auto bad_magic = good;
  bad_magic.magic ^= 1;
  auto bad_version = good;
  bad_version.version = 2;
  auto bad_mode = good;
  bad_mode.mode = 0;
  for (const auto& d : {bad_magic, bad_version, bad_mode}) {
    EXPECT_FALSE(layout::parse_descriptor(descriptor_message(d)).has_value());
  }
  SmallMessage no_cap = descriptor_message(good);
  no_cap.cap_count = 0;
  EXPECT_FALSE(layout::parse_descriptor(no_cap).has_value());
  SmallMessage short_msg = descriptor_message(good);
  short_msg.length = 31;
  EXPECT_FALSE(layout::parse_descriptor(short_msg).has_value());

  // The inline form (topics): no capability slot, the handle right after the descriptor.
  SmallMessage inline_form = no_cap;
  const std::uint64_t handle = 77;
  std::memcpy(inline_form.data.data() + sizeof good, &handle, sizeof handle);
  inline_form.length = layout::kInlineHandleDescriptorSize;
  parsed = layout::parse_descriptor(inline_form);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->handle, 77u);
  // Either form exactly: a capability slot beside an inline handle, or a length off by
  // one, is not a descriptor.
  SmallMessage both = inline_form;
  both.cap_count = 1;
  EXPECT_FALSE(layout::parse_descriptor(both).has_value());
  inline_form.length = layout::kInlineHandleDescriptorSize - 1;
  EXPECT_FALSE(layout::parse_descriptor(inline_form).has_value());
}

TEST(BufferDescriptorTest, RangeCheckHasNoOverflow) {
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  EXPECT_TRUE(layout::range_inside(0, 4096, 4096));
  EXPECT_TRUE(layout::range_inside(4096, 0, 4096));
  EXPECT_FALSE(layout::range_inside(4097, 0, 4096));
  EXPECT_FALSE(layout::range_inside(1, 4096, 4096));
  EXPECT_FALSE(layout::range_inside(8, kMax, 4096));
  EXPECT_FALSE(layout::range_inside(kMax, 2, kMax));
}

}  // namespace
}  // namespace vipc::wire
