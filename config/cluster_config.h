// The cluster configuration: one YAML file that describes every brick, volume
// and gateway of a pbrick cluster (schema and every key: docs/config.md).
//
// Loading never stops at the first problem: it collects every error it can
// find, each positioned as "file:line:col: key.path: message", so an operator
// fixes a file in one round trip. Parsing (syntax, types, units, unknown and
// missing keys, enum values) and validation (ranges, alignment, duplicates,
// references, overlaps, persistence/DDIO consistency) are separate steps, so a
// ClusterConfig built in code can be validated the same way as a loaded one.
//
// No exception escapes this API: yaml-cpp throws, and those exceptions are
// caught here and turned into positioned errors. Value types; thread-compatible.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/client.h"
#include "common/layout.h"
#include "common/result.h"
#include "common/transport.h"

namespace pbrick {

// What pbrick does about DDIO on the brick's storage NIC (docs/ddio.md).
// kOff/kOn: `pbrickctl ddio` sets that state before the brick starts.
// kUnmanaged: pbrick never touches the registers and assumes nothing.
enum class DdioMode { kOff, kOn, kUnmanaged };
enum class Frontend { kUblk, kNbd };

const char* ddio_mode_name(DdioMode m);
const char* frontend_name(Frontend f);

struct StoreConfig {
  std::string path;   // absolute path of the pmem file / devdax device
  uint64_t size = 0;  // bytes, a non-zero multiple of kBlockSize
  // store.slow: the slow tier (optional; empty path: none).
  std::string slow_path;  // absolute path of a file or block device on SSD/disk
  uint64_t slow_size = 0;  // bytes, a non-zero multiple of kBlockSize
  // store.slow.low_watermark: free fast blocks the brick keeps by demoting
  // (0: the brick's default, an eighth of the fast tier).
  uint64_t slow_low_watermark = 0;
  // store.slow.demote_rate: background demotion, bytes per second (0: the
  // brick's default, 256 MiB/s).
  uint64_t slow_demote_rate = 0;
};

struct NicConfig {
  std::string netdev;       // e.g. "eth0"; needed when ddio is off or on
  std::string rdma_device;  // e.g. "mlx5_0", "rxe0"; needed for transport rdma
  DdioMode ddio = DdioMode::kUnmanaged;
};

struct BrickConfig {
  std::string name;
  std::string host;
  uint32_t port = 0;  // 1..65535 once validated
  // `socket: /PATH`: the brick listens on this unix socket instead of
  // host:port, for gateways on its own host (transport tcp only); empty: TCP
  // or RDMA on host:port.
  std::string socket;
  // Where the brick listens and clients reach it: unix:SOCKET, or host:port.
  Endpoint endpoint() const;
  Transport transport = Transport::kTcp;
  StoreConfig store;
  NicConfig nic;
  Persistence persistence = Persistence::kRpc;
  // The key actually in force: bricks[i].key_file if given, else
  // cluster.key_file, else empty (no authentication).
  std::string key_file;
  // pbrick-target --max-connections / --max-handshakes (ServerOptions); 0:
  // not in the file, the brick's default. 1..kMaxBrickConnections when given.
  uint32_t max_connections = 0;
  uint32_t max_handshakes = 0;
};

// The most connections (or handshakes) a brick can be told to serve at once.
inline constexpr uint32_t kMaxBrickConnections = 65536;

struct VolumeConfig {
  std::string name;
  uint64_t size = 0;   // bytes, a non-zero multiple of kBlockSize
  std::string brick;   // name of the (first) brick that holds the volume: bricks[0]
  // Every brick of the volume in layout order (`brick: B` is `bricks: [B]`).
  std::vector<std::string> bricks;
  Layout layout = Layout::kSingle;
  // Layout mirror: copies of every block (2 or 3, at most the brick count;
  // default 2); 1 for the other layouts, which take no `copies:`.
  uint32_t copies = 1;
  uint64_t base = 0;   // virtual base address on each brick, kBlockSize aligned
  uint32_t queues = 1;
  uint32_t depth = 64;
  Frontend frontend = Frontend::kNbd;
  // Blocks the gateway keeps mapped at most (0: no bound; else >= kMinMaxMapped).
  uint64_t max_mapped = 0;
  // How long the frontend's loops poll for a completion before they sleep, in
  // microseconds (0: never; at most kMaxPollUs): pbrick-gateway --poll-us,
  // nbdkit poll-us=.
  uint32_t poll_us = 0;
  // Frontend ublk: each queue's thread pinned to the CPUs whose I/O the queue
  // takes (pbrick-gateway --pin-queues).
  bool pin_queues = false;
  // A sync sent with a lone write that a FLUSH/FUA will wait for, where the
  // writer flushes after each write (pbrick-gateway --no-chained-syncs, nbdkit
  // chained-syncs=false turn it off).
  bool chained_syncs = true;

  // `bricks`, or {brick} for a config built in code that set only `brick`.
  std::vector<std::string> brick_names() const;
};

// The longest a frontend's loop may poll its ring for a completion before it
// sleeps (volume poll_us:, pbrick-gateway attach --poll-us, nbdkit poll-us=).
inline constexpr uint32_t kMaxPollUs = 1000;

// The smallest bound on mapped blocks: one request of the largest size (16 MiB)
// touches up to 9 blocks, and concurrent requests must not keep unmapping
// each other's blocks before they are used.
inline constexpr uint64_t kMinMaxMapped = 16;

struct GatewayConfig {
  std::string name;
  std::string host;
  std::vector<std::string> volumes;  // names of the volumes it exposes
};

struct ClusterSection {
  std::string name;
  std::string key_file;  // default key of every brick; empty = none
};

// 1-based line and column; 0 means "unknown" (e.g. a config built in code).
struct SourcePos {
  int line = 0;
  int column = 0;
};

struct ConfigError {
  std::string file;  // as given by the caller; may be empty
  SourcePos pos;
  std::string path;  // key path: "bricks[0].store.size"; empty for syntax errors
  std::string message;

  // "file:line:col: path: message", leaving out whatever is unknown.
  std::string to_string() const;
};

struct ClusterConfig {
  std::string file;  // the file it was loaded from (for messages)
  ClusterSection cluster;
  std::vector<BrickConfig> bricks;
  std::vector<VolumeConfig> volumes;
  std::vector<GatewayConfig> gateways;

  // Provenance, filled by the parser so validation can point at the right
  // place: positions by key path ("volumes[1].base", "bricks[0]"), and the key
  // paths that were missing or unparsable (validation skips checks on those,
  // so one typo is reported once, not once per rule that reads the field).
  std::map<std::string, SourcePos> positions;
  std::set<std::string> unparsed;

  const BrickConfig* find_brick(const std::string& name) const;
  const VolumeConfig* find_volume(const std::string& name) const;
  const GatewayConfig* find_gateway(const std::string& name) const;
  // Volumes stored on `brick` (as any of their bricks), in file order.
  std::vector<const VolumeConfig*> volumes_on(const std::string& brick) const;
};

struct ConfigParseResult {
  ClusterConfig config;             // best effort: whatever parsed cleanly
  std::vector<ConfigError> errors;
  // False after a YAML syntax error: nothing was parsed, so nothing is validated.
  bool yaml_ok = true;
};

// Parses YAML text; `file` only labels the messages. Parse errors only.
ConfigParseResult parse_cluster_config(const std::string& yaml_text, const std::string& file);

// Semantic checks on a parsed (or hand-built) config: ranges, alignment,
// duplicate names, references, overlapping volumes, persistence vs DDIO.
std::vector<ConfigError> validate_cluster_config(const ClusterConfig& config);

// Parse + validate: every error, sorted by position.
ConfigParseResult check_cluster_config(const std::string& yaml_text, const std::string& file);

// Reads `path` and checks it. An unreadable file yields one error with the
// errno text and no position.
ConfigParseResult check_cluster_config_file(const std::string& path);

// The convenience form: the config, or EINVAL whose context holds every error
// (ConfigError::to_string()) joined by newlines; ENOENT/EACCES/... when the
// file cannot be read, with the reason in the context too ("open FILE: No
// such file or directory (ENOENT)"), so printing context() is enough.
Result<ClusterConfig> load_cluster_config(const std::string& path);

// `pbrickctl config check FILE`: argv[0] is the subcommand name ("check",
// ignored), argv[1] the file. Prints "FILE: OK (N bricks, M volumes,
// K gateways)" to stdout and returns 0, or prints every error on its own line
// to stderr and returns 1; returns 2 on a usage error.
int config_check_main(int argc, char** argv);

}  // namespace pbrick
