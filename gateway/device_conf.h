// The file `pbrick-gateway attach` leaves beside a served device
// (/run/pbrick/ublk-N.conf): every setting the device was attached with, so
// that `recover -n N` serves it again as it was after the daemon died, and
// `replace` swaps a brick in it. One "key=value" per line; a key the reader
// does not know is ignored, a value it cannot read fails the load naming the
// file and the key. Free functions on a value type; thread-compatible.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/result.h"
#include "gateway/volume_spec.h"

namespace pbrick {

// What attach was given: the volume, and what only the ublk device has.
struct AttachParams : VolumeSpec {
  uint32_t logical_block_size = 4096;
  // The volume the device serves, once attach opened it: recover opens no
  // other (VolumeOptions::volume_uuid). Unset in files from before it was kept.
  std::optional<Uuid> volume_uuid;
};

// Replaces `path` whole (written to `path`.tmp, then renamed): a reader sees
// the old file or the new one. Call after VolumeSpec::finalize() (base,
// queues and depth are set).
Status save_device_conf(const std::string& path, const AttachParams& p);

// Reads back what save_device_conf() wrote. ENOENT when there is no file,
// EINVAL naming "path: key" for a value that does not parse.
Result<AttachParams> load_device_conf(const std::string& path);

}  // namespace pbrick
