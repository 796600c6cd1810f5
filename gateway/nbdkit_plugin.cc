// nbdkit-pbrick-plugin: serves a pbrick volume over NBD through nbdkit, which
// brings TLS, filters, multi-conn and structured replies.
//
//   nbdkit .../nbdkit-pbrick-plugin.so target=HOST:PORT[,HOST:PORT...] size=SIZE
//          [layout=single|stripe|mirror] [copies=2|3] [base=ADDR] [key-file=FILE] [queues=N] [depth=N]
//          [timeout=MS] [transport=tcp|rdma] [persistence=sync-read|rpc]
//          [name=NAME] [read-only=true] [poll-us=N]
//   nbdkit .../nbdkit-pbrick-plugin.so config=FILE volume=NAME [...]
//
// With config=, the volume's size, base, queues and depth and its brick's
// address and key come from the cluster file; parameters given as well win.
//
// One Engine serves every NBD connection of the nbdkit process, so a FLUSH on
// any connection persists the writes completed on all of them: multi-conn is
// advertised. Writes a brick's reboot lost are reported to each connection
// open then (Engine::Session), not only to the first to FLUSH. nbdkit bounds-checks every request against get_size before the
// plugin sees it; the engine checks again.
#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include <systemd/sd-daemon.h>

#include <memory>
#include <new>
#include <optional>
#include <string>

#include "common/client.h"
#include "common/log.h"
#include "common/units.h"
#include "config/cluster_config.h"
#include "gateway/engine.h"
#include "gateway/volume_spec.h"

namespace {

using namespace pbrick;

struct Config : VolumeSpec {
  std::string config_file, volume;
};

Config g_config;
std::unique_ptr<Engine> g_engine;

// The one place where pbrick errors become NBD errors: the errno goes to
// nbdkit (which maps it onto the NBD wire), the message to its log.
int report(const Error& e) {
  nbdkit_error("pbrick: %s", e.message().c_str());
  int err;
  switch (e.errnum()) {
    case ENOSPC:
    case EDQUOT:
      err = ENOSPC;  // NBD_ENOSPC: the brick is full
      break;
    case EINVAL:
    case ERANGE:
      err = EINVAL;
      break;
    case EROFS:
    case EACCES:
    case EPERM:
    case EKEYREJECTED:
      err = EPERM;
      break;
    case ENOMEM:
      err = ENOMEM;
      break;
    default:
      err = EIO;
      break;
  }
  nbdkit_set_error(err);
  return -1;
}

int config_u32(const char* key, const char* value, uint32_t min, uint32_t max, uint32_t* out) {
  auto r = parse_u64(value, key);
  if (!r || *r < min || *r > max) {
    nbdkit_error("pbrick: %s=%s: expected a number in %u..%u", key, value, min, max);
    return -1;
  }
  *out = static_cast<uint32_t>(*r);
  return 0;
}

int pbrick_config(const char* key, const char* value) {
  std::string k = key;
  if (k == "target") {
    g_config.targets.clear();  // a later target= replaces an earlier one, like every parameter
    Status st = g_config.add_targets(value, "target");
    if (!st) return nbdkit_error("pbrick: %s", st.error().context().c_str()), -1;
  } else if (k == "layout") {
    auto l = parse_layout(value, "layout");
    if (!l) return nbdkit_error("pbrick: %s", l.error().context().c_str()), -1;
    g_config.layout = *l;
  } else if (k == "leg-timeout") {
    uint32_t v;
    if (config_u32(key, value, 50, 3600000, &v) != 0) return -1;
    g_config.leg_timeout_ms = v;
  } else if (k == "resync-rate") {
    uint32_t v;
    if (config_u32(key, value, 0, 1000000, &v) != 0) return -1;
    g_config.resync_mib_per_s = v;
  } else if (k == "copies") {
    uint32_t v;
    if (config_u32(key, value, kMinCopies, kMaxCopies, &v) != 0) return -1;
    g_config.copies = v;
  } else if (k == "size") {
    auto s = parse_size(value, "size");
    if (!s) return nbdkit_error("pbrick: %s", s.error().context().c_str()), -1;
    g_config.size = *s;
  } else if (k == "base") {
    auto b = parse_u64(value, "base");
    if (!b) return nbdkit_error("pbrick: %s", b.error().context().c_str()), -1;
    g_config.base = *b;
  } else if (k == "key-file") {
    g_config.key_file = value;
  } else if (k == "transport") {
    auto t = parse_transport(value, "transport");
    if (!t) return nbdkit_error("pbrick: %s", t.error().context().c_str()), -1;
    g_config.transport = *t;
  } else if (k == "persistence") {
    auto ps = parse_persistence(value, "persistence");
    if (!ps) return nbdkit_error("pbrick: %s", ps.error().context().c_str()), -1;
    g_config.persistence = *ps;
  } else if (k == "queues") {
    uint32_t v;
    if (config_u32(key, value, 1, 64, &v) != 0) return -1;
    g_config.queues = v;
  } else if (k == "depth") {
    uint32_t v;
    if (config_u32(key, value, 1, 4096, &v) != 0) return -1;
    g_config.depth = v;
  } else if (k == "name") {
    g_config.label_name = value;
  } else if (k == "degraded") {
    int b = nbdkit_parse_bool(value);
    if (b == -1) return -1;
    g_config.degraded = b == 1;
  } else if (k == "chained-syncs") {
    int b = nbdkit_parse_bool(value);
    if (b == -1) return -1;
    g_config.chain_syncs = b == 1;
  } else if (k == "read-only") {
    int b = nbdkit_parse_bool(value);
    if (b == -1) return -1;
    g_config.read_only = b == 1;
  } else if (k == "config") {
    g_config.config_file = value;
  } else if (k == "volume") {
    g_config.volume = value;
  } else if (k == "poll-us") {
    uint32_t v;
    if (config_u32(key, value, 0, Engine::kMaxPollUs, &v) != 0) return -1;
    g_config.poll_us = v;
  } else if (k == "timeout") {
    return config_u32(key, value, 100, 3600000, &g_config.timeout_ms);
  } else if (k == "max-mapped") {
    auto v = parse_u64(value, "max-mapped");
    if (!v) return nbdkit_error("pbrick: %s", v.error().context().c_str()), -1;
    g_config.max_mapped = *v;
  } else {
    nbdkit_error("pbrick: unknown parameter '%s' (see nbdkit pbrick --help)", key);
    return -1;
  }
  return 0;
}

int pbrick_config_complete() {
  if (g_config.config_file.empty() != g_config.volume.empty()) {
    return nbdkit_error("pbrick: config=FILE and volume=NAME go together"), -1;
  }
  if (!g_config.config_file.empty()) {
    Status st = g_config.complete_from_config(g_config.config_file, g_config.volume);
    if (!st) return nbdkit_error("pbrick: %s", st.error().context().c_str()), -1;
  }
  const EngineOptions defaults;
  Status st = g_config.finalize(defaults.queues, defaults.depth, /*plugin_style=*/true);
  if (!st) return nbdkit_error("pbrick: %s", st.error().context().c_str()), -1;
  return 0;
}

// Threads do not survive nbdkit's fork into the background, so the engine
// (its event loop threads and connections) starts after it.
int pbrick_after_fork() {
  set_log_prefix(false);
  auto vo = g_config.volume_options();
  if (!vo) return report(vo.error());
  auto volume = Volume::Open(*vo);
  if (!volume) return report(volume.error());
  EngineOptions engine_options;
  engine_options.queues = *g_config.queues;
  engine_options.depth = *g_config.depth;
  // pin_queues (a cluster file's, for a volume it gives frontend: ublk) has
  // nothing to pin here: nbdkit owns the threads that call the plugin.
  engine_options.poll_us = g_config.poll_us.value_or(0);
  auto engine = Engine::Start(std::move(*volume), engine_options);
  if (!engine) return report(engine.error());
  g_engine = std::move(*engine);
  // nbdkit's sockets already listen: tell a Type=notify unit we are serving.
  sd_notifyf(0, "READY=1\nSTATUS=serving %s of %s on brick %s", g_config.volume.empty() ? "volume" : g_config.volume.c_str(),
             format_size(g_config.size).c_str(), g_config.targets_string().c_str());
  nbdkit_debug("pbrick: volume of %llu bytes at %s on brick %s (layout %s), %u queues x %u deep",
               static_cast<unsigned long long>(g_config.size), format_hex(*g_config.base).c_str(),
               g_config.targets_string().c_str(), layout_name(*g_config.layout), *g_config.queues,
               *g_config.depth);
  return 0;
}

void pbrick_unload() {
  if (g_engine) {
    sd_notify(0, "STOPPING=1");
    if (g_config.poll_us.value_or(0) > 0) {
      Engine::PollStats p = g_engine->poll_stats();
      nbdkit_debug("pbrick: poll-us=%u: %llu waits ended by polling, %llu slept", *g_config.poll_us,
                   static_cast<unsigned long long>(p.won), static_cast<unsigned long long>(p.lost));
    } else {
      Engine::SubmitStats s = g_engine->submit_stats();
      nbdkit_debug("pbrick: %llu of %llu requests sent by nbdkit's threads themselves",
                   static_cast<unsigned long long>(s.direct), static_cast<unsigned long long>(s.direct + s.queued));
    }
    uint64_t chained = g_engine->syncs_chained(), sent = 0;
    for (uint32_t b = 0; b < g_config.targets.size(); b++) sent += g_engine->syncs_sent(b);
    if (chained + sent > 0) {
      PBRICK_LOG_INFO("%llu syncs chained to lone writes, %llu syncs sent for FLUSH/FUA",
                      static_cast<unsigned long long>(chained), static_cast<unsigned long long>(sent));
    }
  }
  g_engine.reset();
}

// A connection's handle: its Engine::Session, so that writes a brick's reboot
// lost are reported to every connection open then, not only to the first one
// to FLUSH.
void* pbrick_open(int /*readonly*/) {
  auto* session = new (std::nothrow) Engine::Session(g_engine->begin_session());
  if (session == nullptr) nbdkit_error("pbrick: out of memory for a connection");
  return session;
}

void pbrick_close(void* handle) { delete static_cast<Engine::Session*>(handle); }

// A FLUSH's or FUA request's answer to connection `handle`.
int answer(void* handle, Status st) {
  st = g_engine->answer_for(*static_cast<Engine::Session*>(handle), std::move(st));
  return st ? 0 : report(st.error());
}

int64_t pbrick_get_size(void*) { return static_cast<int64_t>(g_engine->size()); }
int pbrick_can_write(void*) { return g_config.read_only ? 0 : 1; }
int pbrick_can_flush(void*) { return 1; }
int pbrick_can_trim(void*) { return 1; }
int pbrick_can_zero(void*) { return 1; }
int pbrick_can_fua(void*) { return NBDKIT_FUA_NATIVE; }
int pbrick_can_multi_conn(void*) { return 1; }

// Not on a read-only attachment: its allocation map is the one it learned at
// attach, and its writer may have written holes since (nbdkit then reports
// every block as data).
int pbrick_can_extents(void*) { return g_config.read_only ? 0 : 1; }

// Thin provisioning made visible: blocks the brick never allocated are holes
// that read as zeros, so clients such as nbdcopy skip them. Answered from the
// volume's allocation map, without a round trip to the brick.
int pbrick_extents(void*, uint32_t count, uint64_t offset, uint32_t flags, struct nbdkit_extents* extents) {
  const Volume& v = g_engine->volume();
  uint64_t end = offset + count;
  for (uint64_t pos = offset; pos < end;) {
    uint64_t block = pos / proto::kBlockSize;
    uint64_t next = std::min(v.size(), (block + 1) * proto::kBlockSize);
    uint32_t type = v.block_allocated(block) ? 0 : (NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
    if (nbdkit_add_extent(extents, pos, next - pos, type) == -1) return -1;
    if ((flags & NBDKIT_FLAG_REQ_ONE) != 0) break;
    pos = next;
  }
  return 0;
}

int pbrick_block_size(void*, uint32_t* minimum, uint32_t* preferred, uint32_t* maximum) {
  *minimum = 1;
  *preferred = 4096;
  *maximum = static_cast<uint32_t>(Engine::kMaxRequest);
  return 0;
}

int pbrick_pread(void*, void* buf, uint32_t count, uint64_t offset, uint32_t /*flags*/) {
  Status st = g_engine->read(buf, count, offset);
  return st ? 0 : report(st.error());
}

int pbrick_pwrite(void* h, const void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  bool fua = (flags & NBDKIT_FLAG_FUA) != 0;
  Status st = g_engine->write(buf, count, offset, fua);
  if (fua) return answer(h, std::move(st));
  return st ? 0 : report(st.error());
}

int pbrick_flush(void* h, uint32_t /*flags*/) { return answer(h, g_engine->flush()); }

int pbrick_trim(void* h, uint32_t count, uint64_t offset, uint32_t flags) {
  bool fua = (flags & NBDKIT_FLAG_FUA) != 0;
  Status st = g_engine->discard(count, offset, fua);
  if (fua) return answer(h, std::move(st));
  return st ? 0 : report(st.error());
}

// With NBDKIT_FLAG_MAY_TRIM whole blocks are freed (they read back as zeros)
// and partial blocks zero-filled; without it (the client sent NO_HOLE: the
// range must stay provisioned, later writes must not fail for space) every
// byte is written with zeros, allocating blocks not yet allocated.
int pbrick_zero(void* h, uint32_t count, uint64_t offset, uint32_t flags) {
  bool fua = (flags & NBDKIT_FLAG_FUA) != 0;
  Status st = g_engine->discard(count, offset, fua, (flags & NBDKIT_FLAG_MAY_TRIM) == 0);
  if (fua) return answer(h, std::move(st));
  return st ? 0 : report(st.error());
}

nbdkit_plugin make_plugin() {
  nbdkit_plugin p{};
  p.name = "pbrick";
  p.longname = "pbrick remote block storage";
  p.version = "0.1.0";
  p.description = "Serves a pbrick volume (2 MiB blocks on a brick, thin provisioned) over NBD.";
  p.config = pbrick_config;
  p.config_complete = pbrick_config_complete;
  p.config_help =
      "target=HOST:PORT  (required) brick address; HOST:PORT,HOST:PORT,... for the\n"
      "                  bricks of a striped or mirrored volume, in layout order;\n"
      "                  unix:/PATH for a brick on this host listening there (tcp)\n"
      "size=SIZE         (required) volume size, e.g. 1G\n"
      "layout=L          single (default, one brick), stripe (block i on brick i mod N)\n"
      "                  or mirror (copy j of block i on brick (i + j) mod N)\n"
      "copies=C          layout mirror: copies of every block, 2 (default) or 3\n"
      "leg-timeout=MS    layout mirror: a copy failing this long is marked stale and I/O\n"
      "                  goes on without it (default min(5000, timeout / 2))\n"
      "resync-rate=MIB   layout mirror: a resync copies at most MIB MiB a second\n"
      "                  (default 0: as fast as it goes)\n"
      "degraded=true     layout mirror: attach even with bricks unreachable; their copies\n"
      "                  become stale (without it such an attach fails)\n"
      "base=ADDR         brick virtual address of the volume on each brick (2 MiB aligned,\n"
      "                  default 0)\n"
      "key-file=FILE     cluster key\n"
      "transport=T       tcp (default) or rdma\n"
      "persistence=P     sync-read or rpc (default sync-read over tcp, rpc over rdma)\n"
      "queues=N          connections to the brick (default 2)\n"
      "depth=N           requests in flight per connection (default 128)\n"
      "timeout=MS        how long I/O waits for a brick that went away (default 30000)\n"
      "poll-us=N         while I/O is in flight, poll for its completion up to N us before\n"
      "                  sleeping (0..1000, default 0: never): less latency for a busy core\n"
      "name=NAME         the volume's name, kept in its label (default: volume=)\n"
      "read-only=BOOL    share the volume with its writer and never write (default false:\n"
      "                  hold the volume alone; a second holder gets EBUSY naming the first)\n"
      "max-mapped=N      keep at most N blocks mapped on each brick, unmapping its least recently used\n"
      "                  (0: no bound; at least 16), so a tiered brick can demote them\n"
      "chained-syncs=BOOL  false: every FLUSH sends its own syncs (default true: while FLUSHes\n"
      "                  follow writes at depth 1, a sync goes out right behind each write\n"
      "                  and the FLUSH completes with it, a round trip sooner)\n"
      "config=FILE       cluster file (with volume=NAME): the rest comes from there\n"
      "volume=NAME       the volume of config= to serve";
  p.magic_config_key = nullptr;
  p.after_fork = pbrick_after_fork;
  p.unload = pbrick_unload;
  p.open = pbrick_open;
  p.close = pbrick_close;
  p.get_size = pbrick_get_size;
  p.can_write = pbrick_can_write;
  p.can_flush = pbrick_can_flush;
  p.can_trim = pbrick_can_trim;
  p.can_zero = pbrick_can_zero;
  p.can_fua = pbrick_can_fua;
  p.can_multi_conn = pbrick_can_multi_conn;
  p.block_size = pbrick_block_size;
  p.can_extents = pbrick_can_extents;
  p.extents = pbrick_extents;
  p.pread = pbrick_pread;
  p.pwrite = pbrick_pwrite;
  p.flush = pbrick_flush;
  p.trim = pbrick_trim;
  p.zero = pbrick_zero;
  return p;
}

nbdkit_plugin plugin = make_plugin();

}  // namespace

NBDKIT_REGISTER_PLUGIN(plugin)
