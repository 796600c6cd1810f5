// pbrick-target: the brick daemon. Formats or opens a store and serves it.
#include <getopt.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "common/auth.h"
#include "common/client.h"
#include "common/log.h"
#include "common/units.h"
#include "config/cluster_config.h"
#include "config/ddio.h"
#include "target/server.h"
#include "target/store.h"
#include "target/tiering.h"

namespace {

constexpr const char* kUsage =
    "Usage: pbrick-target --store PATH --size SIZE --listen HOST:PORT [options]\n"
    "       pbrick-target --config FILE --brick NAME [options]\n"
    "\n"
    "Serves a pbrick store (a devdax device, an fsdax file or any file) as 2 MiB blocks.\n"
    "A new store is created and formatted; an existing pbrick store is opened.\n"
    "\n"
    "  --config FILE         cluster file: take store, size, address and key of --brick\n"
    "  --brick NAME          the brick of --config to serve (flags given as well win)\n"
    "  --store PATH          store file or devdax device\n"
    "  --size SIZE           store size (512M, 4G, ...); must match an existing store\n"
    "  --listen HOST:PORT    address to serve on (port 0 picks a free one); or unix:/PATH, a unix\n"
    "                        socket (mode 0600) for gateways on this host, transport tcp only\n"
    "  --transport T         tcp (default) or rdma (RDMA CM on --listen; data by one-sided RDMA)\n"
    "  --persistence P       rpc (default) or sync-read: declares the storage NIC's DDIO off, so\n"
    "                        an RDMA READ after RDMA WRITEs makes them durable (docs/persistence.md);\n"
    "                        a pmem store whose persistence domain is cpu_cache (eADR) needs neither\n"
    "  --slow-store PATH     slow tier (a file or device on SSD or disk): capacity beyond the store;\n"
    "                        unmapped blocks move there and come back when mapped\n"
    "  --slow-size SIZE      slow tier size; must match an existing slow tier\n"
    "  --slow-low-watermark N  free fast blocks kept by demoting unmapped ones (default: an eighth of\n"
    "                        the store's blocks)\n"
    "  --slow-demote-rate SIZE  background demotion per second (default 256M; promotions, and the\n"
    "                        demotions that make room for them, are not limited)\n"
    "  --key-file FILE       cluster key: clients must prove they know it\n"
    "  --force-format        format PATH even if it holds data (destroys it)\n"
    "  --max-connections N   connections served at once, once past their handshake (default 128)\n"
    "  --max-handshakes N    connections still in their handshake at once; one more closes the\n"
    "                        oldest of them (default 64)\n"
    "  --port-file FILE      write the bound port to FILE once serving\n"
    "  --log-level LEVEL     error, warning, notice, info (default) or debug\n"
    "  -h, --help\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "pbrick-target: %s\n%s", message.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace pbrick;
  enum { kStore = 1000, kSize, kListen, kKeyFile, kForceFormat, kMaxConn, kMaxHandshakes, kPortFile, kLogLevel,
         kConfig, kBrick, kTransport, kPersistence, kSlowStore, kSlowSize, kSlowLowWatermark, kSlowDemoteRate };
  static const option kOptions[] = {
      {"store", required_argument, nullptr, kStore},
      {"size", required_argument, nullptr, kSize},
      {"listen", required_argument, nullptr, kListen},
      {"key-file", required_argument, nullptr, kKeyFile},
      {"force-format", no_argument, nullptr, kForceFormat},
      {"max-connections", required_argument, nullptr, kMaxConn},
      {"max-handshakes", required_argument, nullptr, kMaxHandshakes},
      {"port-file", required_argument, nullptr, kPortFile},
      {"log-level", required_argument, nullptr, kLogLevel},
      {"config", required_argument, nullptr, kConfig},
      {"brick", required_argument, nullptr, kBrick},
      {"transport", required_argument, nullptr, kTransport},
      {"persistence", required_argument, nullptr, kPersistence},
      {"slow-store", required_argument, nullptr, kSlowStore},
      {"slow-size", required_argument, nullptr, kSlowSize},
      {"slow-low-watermark", required_argument, nullptr, kSlowLowWatermark},
      {"slow-demote-rate", required_argument, nullptr, kSlowDemoteRate},
      {"help", no_argument, nullptr, 'h'},
      {nullptr, 0, nullptr, 0},
  };
  std::string store_path, listen_text, key_file, port_file, config_file, brick_name;
  NicConfig nic;  // the brick's, when it comes from --config
  std::optional<uint32_t> max_connections, max_handshakes;  // flag, else the cluster file's, else the default
  uint64_t size = 0;
  std::string slow_path;
  uint64_t slow_size = 0;
  uint64_t slow_low_watermark = 0, slow_demote_rate = 0;
  bool force_format = false;
  std::optional<Transport> transport;
  std::optional<Persistence> persistence;
  ServerOptions server_options;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", kOptions, nullptr)) != -1) {
    switch (opt) {
      case kStore: store_path = optarg; break;
      case kSlowStore: slow_path = optarg; break;
      case kSlowSize: {
        auto r = parse_size(optarg, "--slow-size");
        if (!r) return usage_error(r.error().message());
        slow_size = *r;
        break;
      }
      case kSlowLowWatermark: {
        auto r = parse_u64(optarg, "--slow-low-watermark");
        if (!r) return usage_error(r.error().message());
        if (*r == 0) return usage_error("--slow-low-watermark must be at least 1 (free fast blocks)");
        slow_low_watermark = *r;
        break;
      }
      case kSlowDemoteRate: {
        auto r = parse_size(optarg, "--slow-demote-rate");
        if (!r) return usage_error(r.error().message());
        if (*r < kBlockSize) return usage_error("--slow-demote-rate must be at least 2M (one block a second)");
        slow_demote_rate = *r;
        break;
      }
      case kSize: {
        auto r = parse_size(optarg, "--size");
        if (!r) return usage_error(r.error().context());
        size = *r;
        break;
      }
      case kListen: listen_text = optarg; break;
      case kKeyFile: key_file = optarg; break;
      case kForceFormat: force_format = true; break;
      case kMaxConn:
      case kMaxHandshakes: {
        const char* flag = opt == kMaxConn ? "--max-connections" : "--max-handshakes";
        auto r = parse_u64(optarg, flag);
        if (!r) return usage_error(r.error().context());
        if (*r == 0 || *r > kMaxBrickConnections) {
          return usage_error(std::string(flag) + ": must be 1.." + std::to_string(kMaxBrickConnections));
        }
        (opt == kMaxConn ? max_connections : max_handshakes) = static_cast<uint32_t>(*r);
        break;
      }
      case kPortFile: port_file = optarg; break;
      case kConfig: config_file = optarg; break;
      case kBrick: brick_name = optarg; break;
      case kTransport: {
        auto r = parse_transport(optarg, "--transport");
        if (!r) return usage_error(r.error().context());
        transport = *r;
        break;
      }
      case kPersistence: {
        auto r = parse_persistence(optarg, "--persistence");
        if (!r) return usage_error(r.error().context());
        persistence = *r;
        break;
      }
      case kLogLevel: {
        if (!set_log_level_by_name(optarg)) {
          return usage_error(std::string("--log-level: unknown level '") + optarg + "'");
        }
        break;
      }
      case 'h': std::fputs(kUsage, stdout); return 0;
      default:
        return usage_error(std::string("unknown or incomplete option '") + argv[optind - 1] + "'");
    }
  }
  if (optind < argc) return usage_error(std::string("unexpected argument '") + argv[optind] + "'");
  if (!config_file.empty() || !brick_name.empty()) {
    if (config_file.empty() || brick_name.empty()) return usage_error("--config and --brick go together");
    auto config = load_cluster_config(config_file);
    if (!config) {
      std::fprintf(stderr, "pbrick-target: %s\n", config.error().context().c_str());
      return 1;
    }
    const BrickConfig* brick = config->find_brick(brick_name);
    if (brick == nullptr) return usage_error("--brick: no brick named '" + brick_name + "' in " + config_file);
    if (!transport) transport = brick->transport;
    if (!persistence) persistence = brick->persistence;
    if (store_path.empty()) store_path = brick->store.path;
    if (size == 0) size = brick->store.size;
    if (slow_path.empty()) slow_path = brick->store.slow_path;
    if (slow_size == 0) slow_size = brick->store.slow_size;
    if (slow_low_watermark == 0) slow_low_watermark = brick->store.slow_low_watermark;
    if (slow_demote_rate == 0) slow_demote_rate = brick->store.slow_demote_rate;
    if (listen_text.empty()) listen_text = brick->endpoint().to_string();
    if (key_file.empty()) key_file = brick->key_file;
    if (!max_connections && brick->max_connections != 0) max_connections = brick->max_connections;
    if (!max_handshakes && brick->max_handshakes != 0) max_handshakes = brick->max_handshakes;
    nic = brick->nic;
  }
  if (max_connections) server_options.max_connections = *max_connections;
  if (max_handshakes) server_options.max_handshakes = *max_handshakes;
  if (store_path.empty()) return usage_error("--store is required");
  if (slow_size != 0 && slow_path.empty()) return usage_error("--slow-size needs --slow-store");
  if ((slow_low_watermark != 0 || slow_demote_rate != 0) && slow_path.empty()) {
    return usage_error("--slow-low-watermark and --slow-demote-rate need --slow-store");
  }
  if (listen_text.empty()) return usage_error("--listen is required");
  auto listen = parse_endpoint(listen_text, "--listen", /*allow_port_zero=*/true);
  if (!listen) return usage_error(listen.error().context());
  server_options.listen = *listen;
  server_options.transport = transport.value_or(Transport::kTcp);
  if (listen->is_unix() && server_options.transport == Transport::kRdma) {
    return usage_error("--listen " + listen_text + ": a unix socket is for --transport tcp; rdma needs HOST:PORT");
  }
  if (listen->is_unix() && !port_file.empty()) {
    return usage_error("--port-file: --listen " + listen_text + " is a unix socket and has no port");
  }
  server_options.persistence = persistence.value_or(Persistence::kRpc);
  if (!key_file.empty()) {
    auto key = load_key_file(key_file);
    if (!key) {
      PBRICK_LOG_ERROR("--key-file: %s", key.error().message().c_str());
      return 1;
    }
    server_options.key = std::move(*key);
  }

  // Block the signals run() reads through its signalfd before any thread exists.
  // An inherited "ignore" (a shell's background job ignores SIGINT) would drop
  // them before the signalfd sees them, so restore the default first.
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Sync-read over RDMA from the cluster file, whose nic says DDIO off: the
  // brick checks the root port itself (ExecStartPre applied it, but the file
  // may have changed since, or the brick was started without the unit) and
  // holds it off while it runs: no `ddio: on` of another brick on the same
  // root port, nor `pbrickctl ddio on`, can turn it on under this one.
  UniqueFd ddio_hold;
  if (server_options.transport == Transport::kRdma && server_options.persistence == Persistence::kSyncRead &&
      nic.ddio == DdioMode::kOff && !nic.netdev.empty()) {
    auto held = ddio_hold_off(nic.netdev);
    if (!held) {
      PBRICK_LOG_ERROR("nic.ddio off: %s", held.error().message().c_str());
      return 1;
    }
    ddio_hold = std::move(*held);
  }

  RegionOptions region_options;
  region_options.path = store_path;
  region_options.size = size;
  auto region = open_pmem_region(region_options);
  if (!region) {
    PBRICK_LOG_ERROR("%s", region.error().message().c_str());
    return 1;
  }
  // One brick per store: a second one (started by hand beside the unit, or
  // while the first still drains) would allocate from the same map and
  // hand the same blocks out twice. Held until exit.
  auto store_lock = lock_store(store_path);
  if (!store_lock) {
    PBRICK_LOG_ERROR("--store: %s", store_lock.error().message().c_str());
    return 1;
  }
  std::unique_ptr<PmemRegion> slow_region;
  UniqueFd slow_lock;
  if (!slow_path.empty()) {
    auto slow = open_pmem_region({slow_path, slow_size, true});
    if (!slow) {
      PBRICK_LOG_ERROR("--slow-store: %s", slow.error().message().c_str());
      return 1;
    }
    slow_region = std::move(*slow);
    auto locked = lock_store(slow_path);
    if (!locked) {
      PBRICK_LOG_ERROR("--slow-store: %s", locked.error().message().c_str());
      return 1;
    }
    slow_lock = std::move(*locked);
  }
  StoreOpenOptions store_options;
  store_options.force_format = force_format;
  auto store = Store::Open(std::move(*region), store_options, std::move(slow_region));
  if (!store) {
    PBRICK_LOG_ERROR("%s", store.error().message().c_str());
    return 1;
  }
  StoreStats stats = (*store)->stats();
  PBRICK_LOG_INFO("store %s: %llu blocks of 2 MiB, %llu allocated", store_path.c_str(),
                  static_cast<unsigned long long>(stats.capacity_blocks),
                  static_cast<unsigned long long>(stats.allocated_blocks));

  if (server_options.transport == Transport::kRdma && !(*store)->region().is_pmem() &&
      !(*store)->region().nothing_to_write_back()) {
    // The NIC writes into the page cache's pages behind the file system's
    // back: a page written back once stays clean after later RDMA WRITEs,
    // so PERSIST's fdatasync would skip them and answer "durable". Newer
    // kernels refuse to register such pages; older ones (before about 6.5,
    // Debian 12's 6.1) let it happen.
    PBRICK_LOG_ERROR("--transport rdma: the store %s is a file on a file system that writes pages back (not pmem, "
                     "tmpfs or hugetlbfs): the NIC's writes would bypass that, and PERSIST could not make them "
                     "durable; serve a devdax device, or use --transport tcp", store_path.c_str());
    return 1;
  }
  if (server_options.transport == Transport::kRdma && !(*store)->region().is_pmem()) {
    // RDMA can only register memory without writeback (tmpfs, hugetlbfs):
    // good for development, gone with the host's power.
    PBRICK_LOG_WARN("RDMA on a file store (%s): a brick process crash loses nothing, a power loss of this host "
                    "loses the store; serve a devdax device in production", store_path.c_str());
  }
  std::unique_ptr<Tiering> tiering;
  if (!slow_path.empty()) {
    TieringOptions tiering_options;
    tiering_options.slow_path = slow_path;
    tiering_options.low_watermark = slow_low_watermark;  // 0: the default
    if (slow_demote_rate != 0) tiering_options.demote_bytes_per_sec = slow_demote_rate;
    auto t = Tiering::Create(**store, tiering_options);
    if (!t) {
      PBRICK_LOG_ERROR("%s", t.error().message().c_str());
      return 1;
    }
    tiering = std::move(*t);
    server_options.tiering = tiering.get();
  }
  auto server = Server::Create(**store, server_options);
  if (!server) {
    PBRICK_LOG_ERROR("%s", server.error().message().c_str());
    return 1;
  }
  if (!port_file.empty()) {
    // Written atomically so a script polling for it never reads a partial port.
    std::string tmp = port_file + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (f == nullptr || std::fprintf(f, "%u\n", (*server)->port()) < 0 || std::fclose(f) != 0 ||
        std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      PBRICK_LOG_ERROR("--port-file %s: %s", port_file.c_str(), std::strerror(errno));
      return 1;
    }
  }
  Status st = (*server)->run();
  if (!st) {
    PBRICK_LOG_ERROR("%s", st.error().message().c_str());
    return 1;
  }
  return 0;
}
