// Fuzzes the decoders of what a brick's label block holds (volume labels and
// the holder record, gateway/volume_label.h): no crash, errors are EBADMSG or
// EINVAL (EUCLEAN for a damaged slot pair), and whatever decodes re-encodes to
// the same bytes.

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>

#include "gateway/volume_label.h"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "label_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pbrick;
  std::span<const uint8_t> in(data, size);
  // Short inputs are padded into a slot so the field checks are reached too.
  uint8_t slot[kLabelSlotSize] = {};
  std::memcpy(slot, data, std::min<size_t>(size, sizeof slot));
  for (std::span<const uint8_t> s : {in, std::span<const uint8_t>(slot, sizeof slot)}) {
    auto l = decode_label(s);
    if (l) {
      auto again = encode_label(*l);
      if (s.size() != again.size() || std::memcmp(again.data(), s.data(), again.size()) != 0) {
        fail("a decoded label does not re-encode to its bytes");
      }
    } else if (l.error().errnum() != EBADMSG && l.error().errnum() != EINVAL) {
      fail("decode_label: unexpected errno");
    }
    auto h = decode_holder(s);
    if (h) {
      auto again = encode_holder(*h);
      if (std::memcmp(again.data(), s.data(), again.size()) != 0) fail("a decoded holder does not re-encode");
      (void)h->to_string();
    } else if (h.error().errnum() != EBADMSG && h.error().errnum() != EINVAL) {
      fail("decode_holder: unexpected errno");
    }
  }
  auto r = read_label_slots(in);
  if (!r && r.error().errnum() != EUCLEAN && r.error().errnum() != EINVAL) fail("read_label_slots: unexpected errno");
  return 0;
}
