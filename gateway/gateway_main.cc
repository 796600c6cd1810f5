// pbrick-gateway: the ublk frontend. Serves a pbrick volume as /dev/ublkbN
// from userspace (ublk_drv), one thread + io_uring per queue.
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/auth.h"
#include "common/client.h"
#include "common/log.h"
#include "common/units.h"
#include "config/cluster_config.h"
#include "gateway/ublk_ctrl.h"
#include "gateway/control_socket.h"
#include "gateway/device_conf.h"
#include "gateway/resync.h"
#include "gateway/ublk_queue.h"
#include "gateway/volume.h"
#include "gateway/volume_io.h"
#include "gateway/volume_spec.h"

namespace {

using namespace pbrick;

constexpr const char* kStateDir = "/run/pbrick";
constexpr uint32_t kMaxIoBytes = 512u << 10;

constexpr const char* kUsage =
    "Usage: pbrick-gateway attach --target HOST:PORT [--target HOST:PORT --layout stripe|mirror ...]\n"
    "                             --size SIZE [options]\n"
    "       pbrick-gateway attach --config FILE --volume NAME [options]\n"
    "       pbrick-gateway list [--json]\n"
    "       pbrick-gateway detach -n ID [--force]\n"
    "       pbrick-gateway recover -n ID [--degraded]\n"
    "       pbrick-gateway replace -n ID --brick OLD --target NEW\n"
    "       pbrick-gateway replace -n ID --config FILE --volume NAME\n"
    "\n"
    "Serves a pbrick volume as the block device /dev/ublkbN (Linux ublk_drv).\n"
    "\n"
    "attach: creates the device, prints its path (/dev/ublkbN) on stdout once it\n"
    "  exists, tells systemd READY=1 and serves in the foreground until SIGTERM or\n"
    "  SIGINT, which stop and delete the device (exit 0).\n"
    "  --target HOST:PORT      the brick; repeat it (or HOST:PORT,HOST:PORT) for the\n"
    "                          bricks of a striped or mirrored volume, in layout order;\n"
    "                          unix:/PATH for a brick on this host listening there (tcp)\n"
    "  --layout L              single (default: one brick), stripe (block i on brick\n"
    "                          i mod N at base + (i div N) x 2 MiB) or mirror (copy j of\n"
    "                          block i on brick (i + j) mod N; docs/layout.md)\n"
    "  --copies C              layout mirror: copies of every block, 2 (default) or 3,\n"
    "                          at most the number of bricks\n"
    "  --leg-timeout MS        layout mirror: a copy whose brick fails this long is marked\n"
    "                          stale (recorded in the other bricks' labels) and I/O goes on\n"
    "                          without it (default min(5000, --timeout / 2))\n"
    "  --resync-rate MIB       layout mirror: a resync copies at most MIB MiB a second\n"
    "                          (default 0: as fast as it goes)\n"
    "  --degraded              layout mirror: attach even with bricks unreachable; their\n"
    "                          copies become stale (without it such an attach fails)\n"
    "  --size SIZE             volume size (a multiple of 4096)\n"
    "  --base ADDR             brick virtual address of the volume on each brick\n"
    "                          (2 MiB aligned; default 0)\n"
    "  --key-file FILE         cluster key\n"
    "  --transport T           tcp (default) or rdma: one RC queue pair per queue, data by\n"
    "                          one-sided RDMA READ/WRITE from registered per-tag buffers\n"
    "  --persistence P         how FLUSH/FUA make writes durable: sync-read (an RDMA READ\n"
    "                          after the writes; needs DDIO off at the brick) or rpc (the\n"
    "                          brick persists on request); default sync-read over tcp,\n"
    "                          rpc over rdma (docs/persistence.md)\n"
    "  --config FILE --volume NAME   take the above from the cluster file (flags win)\n"
    "  --name NAME             the volume's name, kept in its label on first attach and\n"
    "                          checked on every later one (default: --volume's)\n"
    "  --read-only             share the volume with its writer, never write; without it\n"
    "                          the attach holds the volume alone (EBUSY naming the holder\n"
    "                          when another attach has it)\n"
    "  -q, --queues N          hardware queues, one thread each (default 1; at most one per CPU)\n"
    "  --pin-queues            run each queue's thread only on the CPUs whose requests\n"
    "                          go to its queue (default: wherever the scheduler puts it);\n"
    "                          --no-pin-queues undoes a cluster file's pin_queues: true\n"
    "  --poll-us N             while a queue has I/O in flight to a brick, check for the\n"
    "                          reply for up to N us (0..1000) before sleeping: lower\n"
    "                          latency at low depth for CPU (default 0: sleep at once)\n"
    "  -d, --depth N           queue depth (default 64)\n"
    "  --logical-block-size B  512 or 4096 (default 4096)\n"
    "  --timeout MS            how long I/O waits for an unreachable brick (default 30000)\n"
    "  --max-mapped N          keep at most N blocks mapped on each brick, unmapping its least recently used\n"
    "                          (0: no bound; at least 16), so a tiered brick can demote them\n"
    "  --no-chained-syncs      every FLUSH sends its own syncs (default: while FLUSHes follow\n"
    "                          writes at depth 1, a sync goes out right behind each write and\n"
    "                          the FLUSH completes with it, a round trip sooner);\n"
    "                          --chained-syncs undoes a cluster file's chained_syncs: false\n"
    "  The volume parameters are kept in /run/pbrick/ublk-ID.conf for recover.\n"
    "list: the ublk devices (id, state, queues, depth, daemon pid) and, for a mirror, a\n"
    "  line \"copies:\" with each copy's brick and state: in-sync, stale since T,\n"
    "  resyncing N % with an ETA\n"
    "detach -n ID: stops and deletes device ID (asks its daemon to, when it runs).\n"
    "  A device whose daemon died and that is in use (mounted) is left to recover\n"
    "  unless --force: stopped, it fails what the file system has not written back.\n"
    "recover -n ID [--degraded]: after the daemon of ID died (kill -9, crash),\n"
    "  serves ID again with the parameters of /run/pbrick/ublk-ID.conf, in the\n"
    "  foreground like attach; I/O in flight when the daemon died is reissued. A\n"
    "  brick that refuses data connections then does not stop it: its I/O waits\n"
    "  for the brick. A mirror with a brick unreachable recovers only with\n"
    "  --degraded, as it attaches. Only the volume the device was attached to is\n"
    "  served: another volume at its base, or none, is refused.\n"
    "replace -n ID: a mirror's brick OLD (HOST:PORT as attached, or its place 0..N-1)\n"
    "  is replaced by the empty brick NEW while device ID stays in use; every block\n"
    "  is copied to it (progress in list). With --config/--volume: the one brick the\n"
    "  cluster file names differently from what the device serves.\n"
    "attach and recover also take:\n"
    "  --log-level LEVEL       error, warning, notice, info (default) or debug\n";

// -n ID of detach, recover and replace: a ublk device id.
std::optional<uint32_t> device_id(const char* text) {
  auto r = parse_u64(text, "-n");
  if (!r || *r > 1u << 20) return std::nullopt;
  return static_cast<uint32_t>(*r);
}

int usage_error(const std::string& message) {
  std::fprintf(stderr, "pbrick-gateway: %s\n%s", message.c_str(), kUsage);
  return 2;
}

int fail(const Error& e) {
  std::fprintf(stderr, "pbrick-gateway: %s\n", e.message().c_str());
  return 1;
}

std::string conf_path(uint32_t id) { return std::string(kStateDir) + "/ublk-" + std::to_string(id) + ".conf"; }
// The daemon's control socket (control_socket.h): replace.
std::string control_path(uint32_t id) { return std::string(kStateDir) + "/ublk-" + std::to_string(id) + ".sock"; }
// A mirrored volume's copies as its daemon last saw them (mirror_json), for list.
std::string state_path(uint32_t id) { return std::string(kStateDir) + "/ublk-" + std::to_string(id) + ".copies"; }

// Replaces `path` with `text` whole (a reader never sees half of it).
Status write_whole(const std::string& path, const std::string& text) {
  ::mkdir(kStateDir, 0755);
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return errno_error("writing " + tmp);
  bool ok = std::fputs(text.c_str(), f) >= 0;
  ok = std::fclose(f) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) return errno_error("writing " + path);
  return Status::Ok();
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Status save_conf(uint32_t id, const AttachParams& p) {
  ::mkdir(kStateDir, 0755);
  return save_device_conf(conf_path(id), p);
}

Result<AttachParams> load_conf(uint32_t id) { return load_device_conf(conf_path(id)); }

Result<std::unique_ptr<Volume>> open_volume(const AttachParams& p) {
  auto vo = p.volume_options();
  if (!vo) return vo.error();
  vo->volume_uuid = p.volume_uuid;
  return Volume::Open(*vo);
}

Result<UniqueFd> open_cdev(uint32_t id) {
  std::string path = "/dev/ublkc" + std::to_string(id);
  for (int i = 0; i < 100; i++) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) return UniqueFd(fd);
    if (errno != ENOENT) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // udev / devtmpfs
  }
  return errno_error("open " + path);
}

// The queues of one served device. Their threads run where the scheduler
// puts them, or with --pin-queues on the CPUs whose requests the kernel hands
// to their queue (docs/performance.md, "Run 5": pinned threads share their
// CPU with the submitter and cost more per I/O in the VM).
struct Server {
  std::unique_ptr<Volume> volume;
  UblkDevice dev;
  UniqueFd cdev;
  std::vector<std::unique_ptr<UblkQueue>> queues;

  // An attach or recover that failed after the volume opened detaches it
  // cleanly too (serve() does it itself, to say which device).
  ~Server() {
    queues.clear();
    if (!volume) return;
    if (Status closed = volume->close(); !closed) PBRICK_LOG_WARN("detach: %s", closed.error().message().c_str());
  }
  Server() = default;
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Every queue's UblkQueue::prepare(): nothing of the device's is touched.
  Status prepare_queues(UblkControl& ctrl, uint32_t nr_queues, const AttachParams& p) {
    dev.poll = std::chrono::microseconds(p.poll_us.value_or(0));
    for (uint32_t q = 0; q < nr_queues; q++) {
      std::optional<cpu_set_t> cpus;
      if (p.pin_queues.value_or(false)) {
        auto mask = ctrl.get_queue_affinity(dev.dev_id, static_cast<uint16_t>(q));
        if (!mask) return mask.error();
        cpus = *mask;
      }
      queues.push_back(std::make_unique<UblkQueue>(dev, static_cast<uint16_t>(q), cpus));
      dev.queues.push_back(queues.back().get());
    }
    for (auto& q : queues) PBRICK_TRY(q->prepare());
    return Status::Ok();
  }

  // Once `cdev` is open: every queue's thread, each ready (its FETCHes sent).
  Status launch_queues() {
    dev.cdev_fd = cdev.get();
    for (auto& q : queues) PBRICK_TRY(q->launch());
    for (auto& q : queues) PBRICK_TRY(q->wait_ready());
    return Status::Ok();
  }
};

void block_signals() {
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

// A device that recovers after its daemon dies (UBLK_F_USER_RECOVERY) fails
// every request from STOP_DEV on, the writeback del_gendisk() starts for a
// file system still mounted on it included: what that file system held
// dirty would be lost (and its journal aborted). So a device held
// exclusively (mounted, or a holder such as device-mapper) is not stopped
// under its holder: the daemon serves on until it is released, or until a
// second SIGTERM/SIGINT in `mask` says to stop anyway.
void wait_until_released(uint32_t id, const sigset_t& mask) {
  const std::string dev = "/dev/ublkb" + std::to_string(id);
  bool said = false;
  for (;;) {
    UniqueFd fd(::open(dev.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
    if (fd.valid() || errno != EBUSY) return;
    if (!said) {
      PBRICK_LOG_NOTICE("%s is in use (mounted?): serving on until it is released (SIGTERM again to stop anyway)",
                        dev.c_str());
      sd_notifyf(0, "STATUS=stopping: %s is in use (mounted?); serving until it is released", dev.c_str());
      said = true;
    }
    timespec wait{0, 200 * 1000 * 1000};
    if (sigtimedwait(&mask, nullptr, &wait) > 0) {
      PBRICK_LOG_WARN("%s: stopping while in use: a file system on it loses what it has not written back", dev.c_str());
      return;
    }
  }
}

// Before STOP_DEV, while this daemon still serves: what a holder of the
// device still has dirty (a file system stopped anyway, see above) and the
// device's own page cache are written back now, as far as they can be.
// BLKFLSBUF syncs the holder's file system and the device.
void flush_before_stop(uint32_t id) {
  const std::string dev = "/dev/ublkb" + std::to_string(id);
  UniqueFd fd(::open(dev.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    // No node (a container with only the control device): nothing there to hold it.
    if (errno != ENOENT) {
      PBRICK_LOG_WARN("%s: open to write back before stopping: %s", dev.c_str(), std::strerror(errno));
    }
    return;
  }
  if (::ioctl(fd.get(), BLKFLSBUF, 0) != 0) {
    PBRICK_LOG_WARN("%s: BLKFLSBUF before stopping: %s", dev.c_str(), std::strerror(errno));
  }
}

// Serves until SIGTERM/SIGINT, then STOP_DEV, waits for the queues, DEL_DEV.
int serve(UblkControl& ctrl, Server& s, const AttachParams& p) {
  uint32_t id = s.dev.dev_id;
  std::printf("/dev/ublkb%u\n", id);
  std::fflush(stdout);
  const std::string serving = "serving /dev/ublkb" + std::to_string(id) + ": " + format_size(p.size) + " on brick " +
                              p.targets_string();
  sd_notifyf(0, "READY=1\nSTATUS=%s", serving.c_str());
  // A mirror: the STATUS line says "degraded" while a copy is not in sync;
  // list shows each copy (state_path).
  std::unique_ptr<MirrorResync> resync = MirrorResync::Start(*s.volume, [&, id] {
    std::string summary = mirror_summary(*s.volume);
    sd_notifyf(0, "STATUS=%s (mirror: %s)", serving.c_str(), summary.c_str());
    PBRICK_LOG_INFO("/dev/ublkb%u: mirror: %s", id, summary.c_str());
    Status st = write_whole(state_path(id), mirror_json(*s.volume) + "\n");
    if (!st) PBRICK_LOG_WARN("%s", st.error().message().c_str());
  });
  PBRICK_LOG_INFO("/dev/ublkb%u: %s at %s on brick %s (layout %s), %u queues x %u deep", id,
                  format_size(p.size).c_str(), format_hex(*p.base).c_str(), p.targets_string().c_str(),
                  layout_name(p.layout.value_or(Layout::kSingle)), *p.queues, *p.depth);
  // replace: a mirror's brick by an empty one (Volume::replace_brick), then
  // the resync copies every block to it; recover keeps the new brick list.
  AttachParams current = p;
  std::unique_ptr<ControlSocket> control;
  if (s.volume->mirror() != nullptr) {
    auto listening = ControlSocket::Listen(control_path(id), [&](const std::vector<std::string>& w)
                                                                 -> Result<std::string> {
      if (w.size() != 3 || w[0] != "replace") return Error(EINVAL, "expected: replace OLD NEW");
      std::optional<uint32_t> place;
      for (uint32_t b = 0; b < s.volume->brick_count(); b++) {
        if (s.volume->brick_name(b) == w[1] || std::to_string(b) == w[1]) place = b;
      }
      if (!place) return Error(ENOENT, "--brick " + w[1] + ": not a brick of /dev/ublkb" + std::to_string(id));
      auto target = parse_endpoint(w[2], "--target");
      if (!target) return target.error();
      ClientOptions o;
      o.endpoint = *target;
      const std::string old_name = s.volume->brick_name(*place);
      PBRICK_TRY(s.volume->replace_brick(*place, o));
      current.targets[*place] = *target;
      Status st = save_conf(id, current);
      if (!st) PBRICK_LOG_WARN("%s (recover would use the old brick list)", st.error().message().c_str());
      if (resync) resync->poke();
      return "brick " + std::to_string(*place) + " (" + old_name + ") replaced by " + w[2] + "; copying every block to it";
    });
    if (!listening) {
      PBRICK_LOG_WARN("%s: replace will not reach this daemon", listening.error().message().c_str());
    } else {
      control = std::move(*listening);
    }
  }
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  int sig = 0;
  while (sigwait(&mask, &sig) != 0) {
  }
  sd_notify(0, "STOPPING=1");
  PBRICK_LOG_INFO("/dev/ublkb%u: %s: stopping", id, strsignal(sig));
  wait_until_released(id, mask);
  control.reset();
  resync.reset();
  ::unlink(state_path(id).c_str());
  flush_before_stop(id);
  int rc = 0;
  Status st = ctrl.stop_dev(id);
  if (!st) {
    // The queues end only once the kernel aborts their tags, which a
    // STOP_DEV that did not happen never does: waiting would hang. Exiting
    // leaves the device to recover or detach (its .conf is kept).
    PBRICK_LOG_ERROR("%s: exiting with the device in place (pbrick-gateway recover -n %u, or detach -n %u)",
                     st.error().message().c_str(), id, id);
    std::_Exit(1);
  }
  for (auto& q : s.queues) q->join();
  s.queues.clear();
  // No I/O runs now: a mirror detaches cleanly, else its next attach
  // repairs the copies (Volume::close).
  if (Status closed = s.volume->close(); !closed) {
    PBRICK_LOG_WARN("/dev/ublkb%u: detach: %s", id, closed.error().message().c_str());
  }
  s.cdev.reset();
  st = ctrl.del_dev(id);
  if (!st) {
    PBRICK_LOG_ERROR("%s", st.error().message().c_str());
    rc = 1;
  }
  ::unlink(conf_path(id).c_str());
  return rc;
}

// Every queue holds depth x kMaxIoBytes of I/O buffers, populated up front
// (the kernel gives at most one queue per CPU). Refused before the device
// exists when that is more than half the machine's memory or more than the
// process may map: else the first allocation, or the OOM killer after it,
// would leave a device no daemon serves.
Status check_buffer_memory(uint32_t queues, uint32_t depth) {
  const long cpus = ::sysconf(_SC_NPROCESSORS_CONF);
  const uint64_t served = std::min<uint64_t>(queues, cpus > 0 ? static_cast<uint64_t>(cpus) : queues);
  const uint64_t need = served * depth * kMaxIoBytes;
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  const uint64_t half = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 2 : 0;
  rlimit as{};
  const uint64_t limit = ::getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY ? as.rlim_cur / 2 : 0;
  const std::string what = "--depth " + std::to_string(depth) + " x " + std::to_string(served) + " queue(s) need " +
                           format_size(need) + " of I/O buffers (" + format_size(kMaxIoBytes) + " per tag)";
  if (half != 0 && need > half) {
    return Error(ENOMEM, what + ", more than half of this machine's memory (" + format_size(2 * half) +
                             "): lower --depth or --queues");
  }
  if (limit != 0 && need > limit) {
    return Error(ENOMEM, what + ", more than half of what this process may map (RLIMIT_AS " + format_size(2 * limit) +
                             "): lower --depth or --queues");
  }
  return Status::Ok();
}

int attach_main(int argc, char** argv) {
  enum {
    kTarget = 1000,
    kSize,
    kBase,
    kKeyFile,
    kConfig,
    kVolume,
    kLbs,
    kTimeout,
    kLogLevel,
    kTransport,
    kPersistence,
    kLayout,
    kReadOnly,
    kName,
    kMaxMapped,
    kCopies,
    kLegTimeout,
    kResyncRate,
    kDegraded,
    kPinQueues,
    kPollUs,
    kNoChainedSyncs,
    kNoPinQueues,
    kChainedSyncs
  };
  static const option kOptions[] = {
      {"target", required_argument, nullptr, kTarget},
      {"size", required_argument, nullptr, kSize},
      {"base", required_argument, nullptr, kBase},
      {"key-file", required_argument, nullptr, kKeyFile},
      {"config", required_argument, nullptr, kConfig},
      {"volume", required_argument, nullptr, kVolume},
      {"queues", required_argument, nullptr, 'q'},
      {"depth", required_argument, nullptr, 'd'},
      {"logical-block-size", required_argument, nullptr, kLbs},
      {"timeout", required_argument, nullptr, kTimeout},
      {"max-mapped", required_argument, nullptr, kMaxMapped},
      {"log-level", required_argument, nullptr, kLogLevel},
      {"transport", required_argument, nullptr, kTransport},
      {"persistence", required_argument, nullptr, kPersistence},
      {"layout", required_argument, nullptr, kLayout},
      {"copies", required_argument, nullptr, kCopies},
      {"leg-timeout", required_argument, nullptr, kLegTimeout},
      {"resync-rate", required_argument, nullptr, kResyncRate},
      {"degraded", no_argument, nullptr, kDegraded},
      {"pin-queues", no_argument, nullptr, kPinQueues},
      {"poll-us", required_argument, nullptr, kPollUs},
      {"no-chained-syncs", no_argument, nullptr, kNoChainedSyncs},
      {"no-pin-queues", no_argument, nullptr, kNoPinQueues},
      {"chained-syncs", no_argument, nullptr, kChainedSyncs},
      {"read-only", no_argument, nullptr, kReadOnly},
      {"name", required_argument, nullptr, kName},
      {"help", no_argument, nullptr, 'h'},
      {nullptr, 0, nullptr, 0},
  };
  AttachParams p;
  std::string config_file, volume_name;
  opterr = 0;
  optind = 1;
  int opt;
  while ((opt = getopt_long(argc, argv, "q:d:h", kOptions, nullptr)) != -1) {
    switch (opt) {
      case kTarget: {
        Status st = p.add_targets(optarg, "--target");
        if (!st) return usage_error(st.error().context());
        break;
      }
      case kLayout: {
        auto r = parse_layout(optarg, "--layout");
        if (!r) return usage_error(r.error().context());
        p.layout = *r;
        break;
      }
      case kLegTimeout: {
        auto r = parse_u64(optarg, "--leg-timeout");
        if (!r || *r < 50 || *r > 3600000) return usage_error("--leg-timeout must be 50..3600000 ms");
        p.leg_timeout_ms = static_cast<uint32_t>(*r);
        break;
      }
      case kResyncRate: {
        auto r = parse_u64(optarg, "--resync-rate");
        if (!r || *r > 1000000) return usage_error("--resync-rate must be 0..1000000 MiB a second");
        p.resync_mib_per_s = static_cast<uint32_t>(*r);
        break;
      }
      case kCopies: {
        auto r = parse_u64(optarg, "--copies");
        if (!r) return usage_error(r.error().context());
        if (*r < kMinCopies || *r > kMaxCopies) return usage_error("--copies must be 2 or 3");
        p.copies = static_cast<uint32_t>(*r);
        break;
      }
      case kSize: {
        auto r = parse_size(optarg, "--size");
        if (!r) return usage_error(r.error().context());
        p.size = *r;
        break;
      }
      case kBase: {
        auto r = parse_u64(optarg, "--base");
        if (!r) return usage_error(r.error().context());
        p.base = *r;
        break;
      }
      case kKeyFile: {
        // Kept in the device's .conf for recover, which may run from any
        // directory (a unit's is /): absolute, as this one resolves it.
        std::error_code ec;
        p.key_file = std::filesystem::absolute(optarg, ec).string();
        if (ec || *optarg == '\0') return usage_error(std::string("--key-file: not a path: '") + optarg + "'");
        break;
      }
      case kTransport: {
        auto r = parse_transport(optarg, "--transport");
        if (!r) return usage_error(r.error().context());
        p.transport = *r;
        break;
      }
      case kPersistence: {
        auto r = parse_persistence(optarg, "--persistence");
        if (!r) return usage_error(r.error().context());
        p.persistence = *r;
        break;
      }
      case kReadOnly: p.read_only = true; break;
      case kDegraded: p.degraded = true; break;
      case kPinQueues: p.pin_queues = true; break;
      case kNoChainedSyncs: p.chain_syncs = false; break;
      case kNoPinQueues: p.pin_queues = false; break;
      case kChainedSyncs: p.chain_syncs = true; break;
      case kPollUs: {
        auto r = parse_u64(optarg, "--poll-us");
        if (!r || *r > kMaxPollUs) return usage_error("--poll-us must be 0.." + std::to_string(kMaxPollUs) + " us");
        p.poll_us = static_cast<uint32_t>(*r);
        break;
      }
      case kName: p.label_name = optarg; break;
      case kConfig: config_file = optarg; break;
      case kVolume: volume_name = optarg; break;
      case 'q':
      case 'd': {
        auto r = parse_u64(optarg, opt == 'q' ? "--queues" : "--depth");
        if (!r) return usage_error(r.error().context());
        if (opt == 'q') {
          if (*r == 0 || *r > 64) return usage_error("--queues must be 1..64");
          p.queues = static_cast<uint32_t>(*r);
        } else {
          if (*r == 0 || *r > 4096) return usage_error("--depth must be 1..4096");
          p.depth = static_cast<uint32_t>(*r);
        }
        break;
      }
      case kLbs: {
        std::string v = optarg;
        if (v != "512" && v != "4096") return usage_error("--logical-block-size must be 512 or 4096");
        p.logical_block_size = static_cast<uint32_t>(std::stoul(v));
        break;
      }
      case kTimeout: {
        auto r = parse_u64(optarg, "--timeout");
        if (!r || *r < 100 || *r > 3600000) return usage_error("--timeout must be 100..3600000 ms");
        p.timeout_ms = static_cast<uint32_t>(*r);
        break;
      }
      case kMaxMapped: {
        auto r = parse_u64(optarg, "--max-mapped");
        if (!r) return usage_error(r.error().context());
        p.max_mapped = *r;
        break;
      }
      case kLogLevel: {
        if (!set_log_level_by_name(optarg)) {
          return usage_error(std::string("--log-level: unknown level '") + optarg + "'");
        }
        break;
      }
      case 'h': std::fputs(kUsage, stdout); return 0;
      default: return usage_error(std::string("unknown or incomplete option '") + argv[optind - 1] + "'");
    }
  }
  if (optind < argc) return usage_error(std::string("unexpected argument '") + argv[optind] + "'");
  if (config_file.empty() != volume_name.empty()) return usage_error("--config and --volume go together");
  if (!config_file.empty()) {
    // A file that cannot be read is --config's error; a volume it lacks (ENOENT below) --volume's.
    if (::access(config_file.c_str(), R_OK) != 0) {
      return usage_error("--config: " + config_file + ": " + std::strerror(errno));
    }
    Status st = p.complete_from_config(config_file, volume_name);
    if (!st) {
      if (st.error().errnum() == ENOENT) return usage_error("--volume: " + st.error().context());
      std::fprintf(stderr, "pbrick-gateway: %s\n", st.error().context().c_str());
      return 1;
    }
  }
  if (Status st = p.finalize(/*default_queues=*/1, /*default_depth=*/64, /*plugin_style=*/false); !st) {
    return usage_error(st.error().context());
  }
  if (Status st = check_buffer_memory(*p.queues, *p.depth); !st) return usage_error(st.error().context());

  block_signals();
  auto ctrl = UblkControl::Open();
  if (!ctrl) return fail(ctrl.error());
  Server s;
  auto volume = open_volume(p);
  if (!volume) return fail(volume.error());
  s.volume = std::move(*volume);

  uint64_t want = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE | UBLK_F_CMD_IOCTL_ENCODE;
  ublksrv_ctrl_dev_info info{};
  info.nr_hw_queues = static_cast<uint16_t>(*p.queues);
  info.queue_depth = static_cast<uint16_t>(*p.depth);
  info.max_io_buf_bytes = kMaxIoBytes;
  info.dev_id = UINT32_MAX;
  info.ublksrv_pid = getpid();
  info.flags = want & ctrl->features();
  Status st = ctrl->add_dev(&info);
  if (!st) return fail(st.error());
  uint32_t id = info.dev_id;
  // ADD_DEV answers with the device the kernel made, which may have fewer
  // queues than asked: ublk gives a device at most one per CPU. Serving the
  // queues asked for would fail on the first one it lacks.
  if (info.nr_hw_queues != *p.queues) {
    PBRICK_LOG_NOTICE("--queues %u: the kernel gave /dev/ublkb%u %u (at most one per CPU); serving %u", *p.queues, id,
                      info.nr_hw_queues, info.nr_hw_queues);
    p.queues = info.nr_hw_queues;
  }
  auto cleanup = [&] {
    ::unlink(conf_path(id).c_str());
    s.queues.clear();
    s.cdev.reset();
    Status d = ctrl->del_dev(id);
    if (!d) PBRICK_LOG_ERROR("%s", d.error().message().c_str());
  };

  ublk_params params{};
  params.types = UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD;
  uint8_t shift = p.logical_block_size == 512 ? 9 : 12;
  params.basic.attrs = UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA | (p.read_only ? UBLK_ATTR_READ_ONLY : 0);
  params.basic.logical_bs_shift = shift;
  params.basic.physical_bs_shift = 12;
  params.basic.io_min_shift = shift;
  params.basic.io_opt_shift = 12;
  params.basic.max_sectors = info.max_io_buf_bytes >> 9;
  params.basic.dev_sectors = p.size >> 9;
  params.discard.discard_granularity = static_cast<uint32_t>(proto::kBlockSize);
  params.discard.max_discard_sectors = (256u << 20) >> 9;
  params.discard.max_write_zeroes_sectors = (256u << 20) >> 9;
  params.discard.max_discard_segments = 1;
  st = ctrl->set_params(id, &params);
  if (!st) {
    cleanup();
    return fail(st.error());
  }
  // Kept for recover, and for the .conf a replace writes while serving.
  p.volume_uuid = s.volume->label().volume_uuid;
  AttachParams saved = p;
  // Files an earlier device of this id left (its daemon killed): its .conf
  // must not outlive a failed save, its mirror's copies not show under this
  // device in list.
  ::unlink(conf_path(id).c_str());
  ::unlink(state_path(id).c_str());
  st = save_conf(id, saved);
  if (!st) PBRICK_LOG_WARN("%s (recover will not find the volume)", st.error().message().c_str());

  auto cdev = open_cdev(id);
  if (!cdev) {
    cleanup();
    return fail(cdev.error());
  }
  s.cdev = std::move(*cdev);
  s.dev.volume = s.volume.get();
  s.dev.dev_id = id;
  s.dev.depth = info.queue_depth;
  s.dev.max_io_bytes = info.max_io_buf_bytes;
  s.dev.ioctl_encode = (ctrl->features() & UBLK_F_CMD_IOCTL_ENCODE) != 0;
  st = s.prepare_queues(*ctrl, *p.queues, p);
  if (st) st = s.launch_queues();
  if (st) st = ctrl->start_dev(id, getpid());
  if (!st) {
    // Queue threads may hold FETCHes on the device: DEL_DEV would wait for
    // them. DEL_DEV_ASYNC removes it once exiting releases them, so a
    // failing attach leaves nothing behind (a service restarting it would
    // otherwise add a device per attempt).
    ::unlink(conf_path(id).c_str());
    Status removed = ctrl->del_dev_async(id);
    if (removed) {
      PBRICK_LOG_ERROR("%s", st.error().message().c_str());
    } else {
      PBRICK_LOG_ERROR("%s; remove the device with: pbrick-gateway detach -n %u (%s)", st.error().message().c_str(), id,
                       removed.error().message().c_str());
    }
    std::_Exit(1);
  }
  return serve(*ctrl, s, p);
}

int recover_main(int argc, char** argv) {
  enum { kDegraded = 1000, kLogLevel };
  static const option longopts[] = {{"degraded", no_argument, nullptr, kDegraded},
                                    {"log-level", required_argument, nullptr, kLogLevel},
                                    {"help", no_argument, nullptr, 'h'},
                                    {nullptr, 0, nullptr, 0}};
  std::optional<uint32_t> id;
  bool degraded = false;
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "n:h", longopts, nullptr)) != -1) {
    switch (opt) {
      case 'n':
        id = device_id(optarg);
        if (!id) return usage_error("-n: expected a device id");
        break;
      case kDegraded: degraded = true; break;
      case kLogLevel:
        if (!set_log_level_by_name(optarg)) {
          return usage_error(std::string("--log-level: unknown level '") + optarg + "'");
        }
        break;
      case 'h': std::fputs(kUsage, stdout); return 0;
      default: return usage_error("recover: unknown or incomplete option '" + std::string(argv[optind - 1]) + "'");
    }
  }
  if (optind < argc) return usage_error(std::string("recover: unexpected argument '") + argv[optind] + "'");
  if (!id) return usage_error("recover: -n ID is required");
  auto p = load_conf(*id);
  if (!p) return fail(p.error());
  // A mirror whose brick died before its daemon did: the brick is stale in
  // the others' labels, but only the operator knows that no other attach
  // wrote to it alone meanwhile (split brain), as for attach: asked each
  // time, not taken from an attach that was degraded once.
  p->degraded = degraded;
  block_signals();
  auto ctrl = UblkControl::Open();
  if (!ctrl) return fail(ctrl.error());
  auto info = ctrl->get_dev_info(*id);
  if (!info) return fail(info.error());
  if (info->state == UBLK_S_DEV_DEAD) {
    // Stopped (its disk is gone) before its daemon exited, or never started:
    // the kernel takes no recovery of it, and no file system can be on it.
    return fail(Error(ENODEV, "device " + std::to_string(*id) + " is dead (stopped, or never started): nothing to "
                                  "recover; remove it with pbrick-gateway detach -n " + std::to_string(*id) +
                                  " and attach the volume again"));
  }
  // The file must describe this device: one left by another attach of the
  // same id would put another volume under it. Checked before the volume is
  // opened and the kernel asked to recover: a refusal leaves both as they were.
  auto params = ctrl->get_params(*id);
  if (!params) return fail(params.error());
  const uint64_t device_bytes = params->basic.dev_sectors << 9;
  const uint32_t device_lbs = 1u << params->basic.logical_bs_shift;
  const bool device_ro = (params->basic.attrs & UBLK_ATTR_READ_ONLY) != 0;
  if (device_bytes != p->size || device_lbs != p->logical_block_size || device_ro != p->read_only) {
    return fail(Error(EINVAL, conf_path(*id) + " describes " + format_size(p->size) + ", " +
                                  std::to_string(p->logical_block_size) + "-byte blocks" +
                                  (p->read_only ? ", read-only" : "") + ", but device " + std::to_string(*id) +
                                  " has " + format_size(device_bytes) + ", " + std::to_string(device_lbs) +
                                  "-byte blocks" + (device_ro ? ", read-only" : "") +
                                  ": not recovering it with another volume"));
  }
  Server s;
  auto volume = open_volume(*p);
  if (!volume) return fail(volume.error());
  s.volume = std::move(*volume);
  // The kernel quiesces the device once the dead daemon's rings are gone and
  // refuses recovery (EBUSY) until its char device is released too: both can
  // take a moment after the kill.
  for (int i = 0; i < 100 && info->state == UBLK_S_DEV_LIVE; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    info = ctrl->get_dev_info(*id);
    if (!info) return fail(info.error());
  }
  if (info->state == UBLK_S_DEV_LIVE && info->ublksrv_pid > 0 && ::kill(info->ublksrv_pid, 0) == 0) {
    return fail(Error(EBUSY, "device " + std::to_string(*id) + " is live, served by pid " +
                                 std::to_string(info->ublksrv_pid)));
  }
  if ((info->flags & UBLK_F_USER_RECOVERY) == 0) {
    return fail(Error(EOPNOTSUPP, "device " + std::to_string(*id) + " was created without user recovery"));
  }
  s.dev.volume = s.volume.get();
  s.dev.dev_id = *id;
  s.dev.depth = info->queue_depth;
  s.dev.max_io_bytes = info->max_io_buf_bytes;
  s.dev.ioctl_encode = (ctrl->features() & UBLK_F_CMD_IOCTL_ENCODE) != 0;
  s.dev.connect_lazily = true;  // the kernel is recovering: every queue must start
  p->queues = info->nr_hw_queues;
  p->depth = info->queue_depth;
  // Once the kernel began the recovery, it takes another only after every
  // queue fetched its tags (6.12: a later one with some queues never
  // started even dereferences their missing daemon). So what can fail -
  // buffers, rings, memory registration, connections - is done first,
  // while a failure still leaves the device as it was, for another recover.
  Status st = s.prepare_queues(*ctrl, info->nr_hw_queues, *p);
  if (!st) return fail(st.error().wrap("device " + std::to_string(*id) + " left as it was"));
  for (int i = 0; i < 100; i++) {
    st = ctrl->start_user_recovery(*id);
    if (st || st.error().errnum() != EBUSY) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!st) return fail(st.error());
  auto cdev = open_cdev(*id);
  if (cdev) s.cdev = std::move(*cdev);
  st = cdev ? s.launch_queues() : Status(cdev.error());
  if (st) st = ctrl->end_user_recovery(*id, getpid());
  if (!st) {
    // Exiting releases what the queues hold. Only the char device, the
    // descriptors' mapping or a thread can have failed here.
    PBRICK_LOG_ERROR("%s", st.error().message().c_str());
    std::_Exit(1);
  }
  return serve(*ctrl, s, *p);
}

std::vector<uint32_t> device_ids() {
  std::vector<uint32_t> ids;
  for (const char* dir : {"/sys/class/ublk-char", "/dev"}) {
    DIR* d = ::opendir(dir);
    if (d == nullptr) continue;
    while (dirent* e = ::readdir(d)) {
      unsigned id;
      char tail;
      if (std::sscanf(e->d_name, "ublkc%u%c", &id, &tail) == 1) ids.push_back(id);
    }
    ::closedir(d);
    if (!ids.empty()) break;
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

// The copies of a mirror_json text as "H:P in-sync, H:P stale since T, H:P
// resyncing 42 % ETA 12 s".
std::string copies_text(const std::string& json) {
  std::string out;
  auto field = [](const std::string& obj, const std::string& key) -> std::string {
    size_t k = obj.find("\"" + key + "\":");
    if (k == std::string::npos) return "";
    size_t v = k + key.size() + 3;
    if (v < obj.size() && obj[v] == '"') return obj.substr(v + 1, obj.find('"', v + 1) - v - 1);
    return obj.substr(v, obj.find_first_of(",}", v) - v);
  };
  for (size_t at = json.find("{\"target\""); at != std::string::npos; at = json.find("{\"target\"", at + 1)) {
    std::string obj = json.substr(at, json.find('}', at) - at + 1);
    std::string state = field(obj, "state");
    if (!out.empty()) out += ", ";
    out += field(obj, "target") + " " + state;
    if (state == "stale") out += " since " + field(obj, "stale_since");
    if (state == "resyncing") {
      out += " " + field(obj, "resync_percent") + " %";
      if (!field(obj, "eta_s").empty()) out += " ETA " + field(obj, "eta_s") + " s";
    }
  }
  return out;
}

int list_main(int argc, char** argv) {
  bool json = false;
  for (int i = 1; i < argc; i++) {
    if (std::string(argv[i]) == "--json") json = true;
    else return usage_error(std::string("list: unexpected argument '") + argv[i] + "'");
  }
  auto ctrl = UblkControl::Open();
  if (!ctrl) return fail(ctrl.error());
  if (json) std::printf("[");
  bool first = true;
  for (uint32_t id : device_ids()) {
    auto info = ctrl->get_dev_info(id);
    if (!info) continue;
    // A mirror's copies, as its daemon (alive) last wrote them.
    std::string copies;
    if (info->ublksrv_pid > 0 && ::kill(info->ublksrv_pid, 0) == 0) copies = read_whole(state_path(id));
    while (!copies.empty() && copies.back() == '\n') copies.pop_back();
    if (json) {
      std::printf("%s{\"id\":%u,\"state\":\"%s\",\"queues\":%u,\"depth\":%u,\"max_io_bytes\":%u,\"pid\":%d,"
                  "\"flags\":%llu%s%s}",
                  first ? "" : ",", id, ublk_state_name(info->state), info->nr_hw_queues, info->queue_depth,
                  info->max_io_buf_bytes, info->ublksrv_pid, static_cast<unsigned long long>(info->flags),
                  copies.empty() ? "" : ",\"mirror\":", copies.c_str());
    } else {
      if (first) std::printf("%-4s %-9s %6s %6s %8s\n", "ID", "STATE", "QUEUES", "DEPTH", "PID");
      std::printf("%-4u %-9s %6u %6u %8d\n", id, ublk_state_name(info->state), info->nr_hw_queues,
                  info->queue_depth, info->ublksrv_pid);
      // A mirror: its copies on a line of their own, so the columns stay the same for every device.
      if (!copies.empty()) std::printf("     copies: %s\n", copies_text(copies).c_str());
    }
    first = false;
  }
  if (json) std::printf("]\n");
  return 0;
}

int replace_main(int argc, char** argv) {
  enum { kBrick = 1000, kTarget, kConfig, kVolume };
  static const option longopts[] = {{"brick", required_argument, nullptr, kBrick},
                                    {"target", required_argument, nullptr, kTarget},
                                    {"config", required_argument, nullptr, kConfig},
                                    {"volume", required_argument, nullptr, kVolume},
                                    {nullptr, 0, nullptr, 0}};
  std::optional<uint32_t> id;
  std::string brick, target, config, volume;
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "n:", longopts, nullptr)) != -1) {
    switch (opt) {
      case 'n':
        id = device_id(optarg);
        if (!id) return usage_error("-n: expected a device id");
        break;
      case kBrick: brick = optarg; break;
      case kTarget: target = optarg; break;
      case kConfig: config = optarg; break;
      case kVolume: volume = optarg; break;
      default: return usage_error("replace: unknown option '" + std::string(argv[optind - 1]) + "'");
    }
  }
  if (optind < argc) return usage_error(std::string("replace: unexpected argument '") + argv[optind] + "'");
  if (!id) return usage_error("replace: -n ID is required");
  if (!config.empty() || !volume.empty()) {
    // The cluster file names the new brick in the old one's place: the one
    // brick that differs from what the daemon serves is replaced.
    if (config.empty() || volume.empty()) return usage_error("replace: --config and --volume go together");
    if (!brick.empty() || !target.empty()) return usage_error("replace: --brick/--target or --config/--volume");
    auto now = load_conf(*id);
    if (!now) return fail(now.error());
    VolumeSpec file;
    Status st = file.complete_from_config(config, volume);
    if (!st) return fail(st.error());
    // The file's volume must be the one the device serves: a typo naming
    // another volume over some of the same bricks would otherwise swap a
    // brick holding that volume's data into this one, whose resync then
    // copies over it.
    if (file.label_name != now->label_name || file.base.value_or(0) != now->base.value_or(0) ||
        file.size != now->size || file.layout.value_or(Layout::kSingle) != now->layout.value_or(Layout::kSingle)) {
      return fail(Error(EINVAL, config + ": volume " + volume + " (" + format_size(file.size) + " at " +
                                    format_hex(file.base.value_or(0)) + ") is not the volume device " +
                                    std::to_string(*id) + " serves ('" + now->label_name + "', " +
                                    format_size(now->size) + " at " + format_hex(now->base.value_or(0)) + ")"));
    }
    if (file.targets.size() != now->targets.size()) {
      return fail(Error(EINVAL, config + ": volume " + volume + " has " + std::to_string(file.targets.size()) +
                                    " bricks, device " + std::to_string(*id) + " " +
                                    std::to_string(now->targets.size())));
    }
    for (size_t b = 0; b < file.targets.size(); b++) {
      if (file.targets[b].to_string() == now->targets[b].to_string()) continue;
      if (!brick.empty()) {
        return fail(Error(EINVAL, config + ": volume " + volume + " differs from device " + std::to_string(*id) +
                                      " in more than one brick (" + brick + ", " + now->targets[b].to_string() +
                                      "): replace one at a time"));
      }
      brick = now->targets[b].to_string();
      target = file.targets[b].to_string();
    }
    if (brick.empty()) {
      return fail(Error(EINVAL, config + ": volume " + volume + " names the bricks device " + std::to_string(*id) +
                                    " serves already: nothing to replace"));
    }
  }
  if (brick.empty() || target.empty()) return usage_error("replace: --brick OLD and --target NEW are required");
  auto answer = control_request(control_path(*id), {"replace", brick, target}, 120000);
  if (!answer) {
    int e = answer.error().errnum();
    if (e == ENOENT || e == ECONNREFUSED) {
      return fail(Error(e, "device " + std::to_string(*id) + ": no daemon serving a mirror answers on " +
                               control_path(*id)));
    }
    return fail(answer.error());
  }
  std::printf("%s\n", answer->c_str());
  return 0;
}

// Whether process `pid` runs this program (its /proc comm).
bool is_gateway_process(pid_t pid) {
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  return std::getline(comm, name) && name == "pbrick-gateway";
}

// Whether process `pid` has device `id`'s char device open: it serves it (a
// pid recorded by a daemon long dead may since be another gateway's).
bool holds_char_device(pid_t pid, uint32_t id) {
  const std::string fds = "/proc/" + std::to_string(pid) + "/fd";
  const std::string cdev = "/dev/ublkc" + std::to_string(id);
  DIR* d = ::opendir(fds.c_str());
  if (d == nullptr) return false;
  bool found = false;
  while (dirent* e = ::readdir(d)) {
    char target[64];
    ssize_t n = ::readlinkat(::dirfd(d), e->d_name, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (cdev == target) {
      found = true;
      break;
    }
  }
  ::closedir(d);
  return found;
}

int detach_main(int argc, char** argv) {
  enum { kForce = 1000 };
  static const option longopts[] = {{"force", no_argument, nullptr, kForce}, {nullptr, 0, nullptr, 0}};
  std::optional<uint32_t> id;
  bool force = false;
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "n:", longopts, nullptr)) != -1) {
    if (opt == kForce) {
      force = true;
      continue;
    }
    if (opt != 'n') return usage_error("detach: unknown or incomplete option '" + std::string(argv[optind - 1]) + "'");
    id = device_id(optarg);
    if (!id) return usage_error("-n: expected a device id");
  }
  if (optind < argc) return usage_error(std::string("detach: unexpected argument '") + argv[optind] + "'");
  if (!id) return usage_error("detach: -n ID is required");
  auto ctrl = UblkControl::Open();
  if (!ctrl) return fail(ctrl.error());
  auto info = ctrl->get_dev_info(*id);
  if (!info) return fail(info.error());
  pid_t pid = info->ublksrv_pid;
  // Its daemon runs - serving, or still attaching (the device not started
  // yet, dead to the kernel: stopping it under the attach would leave a disk
  // no queue serves) - and stops and deletes the device on SIGTERM. A device
  // that is not live may name a daemon long dead whose pid was reused:
  // signalled only when that process is a pbrick-gateway serving it.
  const std::string dev = "/dev/ublkb" + std::to_string(*id);
  // Held exclusively (a mounted file system, device-mapper): stopped, the
  // device fails every request from then on, the holder's writeback included.
  auto held_by_a_holder = [&] {
    UniqueFd probe(::open(dev.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
    return !probe.valid() && errno == EBUSY;
  };
  if (pid > 0 && ::kill(pid, 0) == 0 &&
      (info->state == UBLK_S_DEV_LIVE ||
       (is_gateway_process(pid) && (info->state == UBLK_S_DEV_DEAD || holds_char_device(pid, *id))))) {
    // The daemon would serve on until the device is released, and a second
    // detach (a second SIGTERM) would stop it anyway: refused here instead,
    // unless forced, so that only --force ever loses a holder's writes.
    if (!force && info->state == UBLK_S_DEV_LIVE && held_by_a_holder()) {
      return fail(Error(EBUSY, dev + " is in use (mounted?): unmount it first, or detach --force (which stops it "
                                     "under its holder: what that has not written back is lost)"));
    }
    ::kill(pid, SIGTERM);
    bool daemon_gone = false;
    for (int i = 0; i < 300; i++) {
      if (!ctrl->get_dev_info(*id)) return 0;
      if (::kill(pid, 0) != 0 || !is_gateway_process(pid)) {
        daemon_gone = true;
        break;
      }
      // Forced: the daemon waiting for the device to be released takes a
      // further SIGTERM as "stop anyway" (signals of one kind pending at once
      // merge: sent again while it still serves the device).
      if (force && i % 10 == 9 && holds_char_device(pid, *id)) ::kill(pid, SIGTERM);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    auto now = ctrl->get_dev_info(*id);
    if (!now) return 0;
    if (now->state == UBLK_S_DEV_DEAD) {
      // Stopped: the kernel deletes it once its last opener lets go.
      std::fprintf(stderr, "pbrick-gateway: %s is stopped but still open (mounted?): it goes once released\n",
                   dev.c_str());
    } else if (daemon_gone) {
      std::fprintf(stderr, "pbrick-gateway: the daemon %d of device %u exited and left it (its log says why): "
                           "pbrick-gateway recover -n %u, or detach -n %u again\n", pid, *id, *id, *id);
    } else {
      std::fprintf(stderr, "pbrick-gateway: device %u still exists 30 s after SIGTERM to %d\n", *id, pid);
    }
    return 1;
  }
  // No daemon: STOP_DEV fails every request the device holds and every later
  // one, a mounted file system's writeback included (see
  // wait_until_released). A device held so is left to recover unless forced.
  if (!force && info->state != UBLK_S_DEV_DEAD && held_by_a_holder()) {
    return fail(Error(EBUSY, dev + " is in use (mounted?) and its daemon is gone: stopping it would fail what "
                                   "its holder has not written back; serve it again with pbrick-gateway recover -n " +
                                   std::to_string(*id) + ", or detach --force"));
  }
  Status st = ctrl->stop_dev(*id);
  if (!st) PBRICK_LOG_WARN("%s", st.error().message().c_str());
  st = ctrl->del_dev(*id);
  if (!st) return fail(st.error());
  // What the dead daemon left: a later device of this id is another volume's.
  ::unlink(conf_path(*id).c_str());
  ::unlink(state_path(*id).c_str());
  ::unlink(control_path(*id).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage_error("a command is required");
  std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "attach") return attach_main(argc - 1, argv + 1);
  if (cmd == "recover") return recover_main(argc - 1, argv + 1);
  if (cmd == "list") return list_main(argc - 1, argv + 1);
  if (cmd == "detach") return detach_main(argc - 1, argv + 1);
  if (cmd == "replace") return replace_main(argc - 1, argv + 1);
  return usage_error("unknown command '" + cmd + "'");
}
