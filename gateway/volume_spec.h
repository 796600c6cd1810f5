// A volume as a frontend is told about it: from command-line flags or plugin
// parameters, completed from the cluster file (`--config F --volume N` or
// `config=F volume=N`). What the user gave wins; what is left comes from the
// file; then defaults. Shared by pbrick-gateway and the nbdkit plugin so both
// read a cluster file the same way. Value type; thread-compatible.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/client.h"
#include "common/layout.h"
#include "common/result.h"
#include "common/transport.h"
#include "gateway/volume.h"

namespace pbrick {

struct VolumeSpec {
  std::vector<Endpoint> targets;  // the bricks in layout order
  std::optional<Layout> layout;   // default single (one target)
  std::optional<uint32_t> copies;  // layout mirror: 2 or 3 (default 2); only with mirror
  uint64_t size = 0;
  std::optional<uint64_t> base;
  std::string key_file;                     // given by the user: every brick's key
  std::vector<std::string> brick_key_files;  // from the cluster file, per brick
  std::optional<uint32_t> queues, depth;
  uint32_t timeout_ms = 30000;
  std::optional<uint32_t> leg_timeout_ms;  // layout mirror; default min(5000, timeout / 2)
  std::optional<uint32_t> resync_mib_per_s;  // layout mirror; VolumeOptions::resync_mib_per_s (default 0)
  std::optional<uint64_t> max_mapped;  // VolumeOptions::max_mapped
  std::optional<uint32_t> poll_us;     // the frontend's bounded polling (0..kMaxPollUs); default 0
  std::optional<bool> pin_queues;      // pbrick-gateway only: queue threads pinned; default not
  std::optional<Transport> transport;      // default tcp
  std::optional<Persistence> persistence;  // default: sync-read over tcp, rpc over rdma
  std::string label_name;  // the volume's name in its label; from the cluster file
  bool read_only = false;  // share the volume with its writer; never write
  bool degraded = false;   // layout mirror: attach without the bricks that cannot be reached
  std::optional<bool> chain_syncs;  // VolumeOptions::chain_syncs (--no-chained-syncs, chained-syncs=); default on

  // Appends the bricks of `list`, "HOST:PORT[,HOST:PORT...]". EINVAL naming
  // `what` (the flag or parameter).
  Status add_targets(std::string_view list, std::string_view what);
  // The bricks as add_targets() reads them back.
  std::string targets_string() const;

  // Fills what is unset from volume `name` of cluster file `path` and its
  // brick. EINVAL carrying every error of the file, ENOENT for an unknown
  // volume.
  Status complete_from_config(const std::string& path, const std::string& name);

  // Checks what is required and applies the defaults (layout single, base 0,
  // `queues`, `depth`). EINVAL naming the parameter as the user spells it:
  // "--size" when `plugin_style` is false, "size=" when true.
  Status finalize(uint32_t default_queues, uint32_t default_depth, bool plugin_style);

  // The options Volume::Open takes; loads the key file. Call after finalize().
  Result<VolumeOptions> volume_options() const;
};

}  // namespace pbrick
