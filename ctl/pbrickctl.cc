// pbrickctl: the admin CLI of a pbrick brick.
#include <fcntl.h>
#include <getopt.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "common/client.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "common/units.h"
#include "config/cluster_config.h"
#include "config/ddio.h"
#include "target/store.h"

namespace {

using namespace pbrick;

constexpr const char* kUsage =
    "Usage: pbrickctl [--target HOST:PORT|unix:/PATH | --config FILE --brick NAME] [--key-file FILE]\n"
    "                 [--transport tcp|rdma] [--json] [--timeout MS] COMMAND [ARGS]\n"
    "\n"
    "Brick commands:\n"
    "  stat                       capacity, usage and identity of the brick\n"
    "  list                       extents of allocated blocks\n"
    "  alloc ADDR                 allocate the 2 MiB block at virtual address ADDR\n"
    "  free ADDR                  free it\n"
    "  map ADDR [--ro] [--shared] [--hold]\n"
    "                             map it and print the handle (rkey, remote address);\n"
    "                             the mapping lives as long as the connection: --hold\n"
    "                             keeps it until stdin closes or a signal arrives\n"
    "  unmap ADDR                 revoke this connection's mapping (useful in scripts\n"
    "                             with --hold; mappings also end with the connection)\n"
    "  write ADDR OFFSET          write stdin at ADDR+OFFSET: allocates and maps the\n"
    "                             blocks as needed, then makes it durable (a sync-read\n"
    "                             over tcp, PERSIST over rdma): persistent on exit 0\n"
    "  read ADDR OFFSET LENGTH    write LENGTH bytes from ADDR+OFFSET to stdout\n"
    "  rread RKEY RADDR LENGTH    one-sided READ through a raw handle (over rdma a\n"
    "                             revoked rkey fails in the NIC: remote access error)\n"
    "  rwrite RKEY RADDR          one-sided WRITE of stdin through a raw handle\n"
    "\n"
    "Store commands (offline, on the brick's host; the brick must be stopped):\n"
    "  fsck --store PATH [--slow-store PATH]\n"
    "                             check a store file or device read-only: the\n"
    "                             superblock, every map entry's checksum, duplicate\n"
    "                             blocks and slots, out-of-range locations; every\n"
    "                             problem is printed naming its map entry. With\n"
    "                             --slow-store, its slow tier too: its superblock,\n"
    "                             that it belongs to this store, its map entries and\n"
    "                             slots (without it, entries in the slow tier's map\n"
    "                             are not read, and fsck says so). Exit status: 0\n"
    "                             clean (as far as checked), 1 problems found,\n"
    "                             3 the store cannot be opened or read, or a running\n"
    "                             brick serves it (holds its lock). Never writes.\n"
    "\n"
    "Cluster commands:\n"
    "  config check FILE          validate a cluster file; prints every error with\n"
    "                             file:line:col and the key path\n"
    "  ddio status|off|on --netdev NAME [--netdev NAME...]\n"
    "                             DDIO of the PCIe root port above a NIC (docs/ddio.md)\n"
    "  ddio apply                 apply --brick's `nic.ddio` from --config, and refuse\n"
    "                             a sync-read brick whose DDIO is not confirmed off\n"
    "\n"
    "ADDR, OFFSET, RKEY and RADDR are hex (0x...) or decimal; LENGTH accepts K, M, G.\n"
    "--target defaults to $PBRICK_TARGET, --config to $PBRICK_CONFIG, --key-file to\n"
    "$PBRICK_KEY_FILE; with --config and --brick, the brick's address and key come\n"
    "from the cluster file (neither variable applies; --target with --brick is an\n"
    "error, --key-file wins), and so does the transport (--transport wins).\n"
    "Exit status: 0 success, 1 operation failed, 2 usage error.\n";

bool g_json = false;

int usage_error(const std::string& message) {
  std::fprintf(stderr, "pbrickctl: %s\n(see pbrickctl --help)\n", message.c_str());
  return 2;
}

int fail(const Error& e) {
  std::fprintf(stderr, "pbrickctl: %s\n", e.message().c_str());
  return 1;
}

std::string map_flags_string(uint32_t flags) {
  std::string s = (flags & proto::kMapWrite) ? "rw" : "ro";
  s += (flags & proto::kMapShared) ? ",shared" : ",exclusive";
  return s;
}

Result<std::vector<uint8_t>> read_stdin() {
  std::vector<uint8_t> data;
  uint8_t buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("reading stdin");
    }
    data.insert(data.end(), buf, buf + n);
  }
  return data;
}

Status write_stdout(const uint8_t* p, size_t len) {
  while (len > 0) {
    ssize_t n = ::write(STDOUT_FILENO, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("writing stdout");
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// A store file or device mapped read-only, for fsck.
class ReadOnlyMapping {
 public:
  static Result<std::unique_ptr<ReadOnlyMapping>> Open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno_error("open " + path);
    auto m = std::unique_ptr<ReadOnlyMapping>(new ReadOnlyMapping(fd));
    auto size = device_size(fd, path);
    if (!size) return size.error();
    if (*size == 0) return Error(EINVAL, path + " is empty");
    void* p = ::mmap(nullptr, *size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return errno_error("mmap " + path);
    m->base_ = static_cast<const uint8_t*>(p);
    m->size_ = *size;
    return m;
  }
  ~ReadOnlyMapping() {
    if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
    ::close(fd_);
  }
  ReadOnlyMapping(const ReadOnlyMapping&) = delete;
  ReadOnlyMapping& operator=(const ReadOnlyMapping&) = delete;
  const uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }

 private:
  explicit ReadOnlyMapping(int fd) : fd_(fd) {}

  // A file's size; a block device's; a devdax device's from sysfs (as libpmem does).
  static Result<uint64_t> device_size(int fd, const std::string& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return errno_error("stat " + path);
    if (S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
    if (S_ISBLK(st.st_mode)) {
      uint64_t size = 0;
      if (::ioctl(fd, BLKGETSIZE64, &size) != 0) return errno_error("BLKGETSIZE64 " + path);
      return size;
    }
    if (S_ISCHR(st.st_mode)) {
      const std::string sys = "/sys/dev/char/" + std::to_string(major(st.st_rdev)) + ":" +
                              std::to_string(minor(st.st_rdev)) + "/size";
      std::ifstream in(sys);
      uint64_t size = 0;
      if (!(in >> size)) return Error(EINVAL, path + ": not a devdax device (no " + sys + ")");
      return size;
    }
    return Error(EINVAL, path + " is neither a file nor a device");
  }

  int fd_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
};

// `fsck --store PATH`: Store::Check() on the mapped store, every problem printed.
int cmd_fsck(const std::vector<std::string>& args) {
  constexpr int kProblemsFound = 1;
  constexpr int kCannotOpen = 3;
  std::string path, slow_path;
  for (size_t i = 1; i < args.size(); i++) {
    if (args[i] == "--store" && i + 1 < args.size()) {
      path = args[++i];
    } else if (args[i].rfind("--store=", 0) == 0) {
      path = args[i].substr(8);
    } else if (args[i] == "--store") {
      return usage_error("fsck: --store needs a PATH");
    } else if (args[i] == "--slow-store" && i + 1 < args.size()) {
      slow_path = args[++i];
    } else if (args[i].rfind("--slow-store=", 0) == 0) {
      slow_path = args[i].substr(13);
    } else if (args[i] == "--slow-store") {
      return usage_error("fsck: --slow-store needs a PATH");
    } else {
      return usage_error("fsck: unexpected argument '" + args[i] + "'");
    }
  }
  if (path.empty()) return usage_error("fsck: --store PATH is required");
  // A running brick holds its store's lock (pbrick-target --store): its map
  // changes under the check, which would report what is only half updated.
  for (const std::string& p : {path, slow_path}) {
    if (p.empty()) continue;
    UniqueFd probe(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (probe.valid() && ::flock(probe.get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
      const std::string why = p + " is served by a running brick (it holds the store's lock): stop it first";
      std::fprintf(stderr, "pbrickctl: fsck: %s\n", why.c_str());
      if (g_json) {
        std::printf("{\"store\":%s,\"clean\":false,\"error\":%s}\n", json_string(path).c_str(),
                    json_string(why).c_str());
      }
      return kCannotOpen;
    }
  }
  auto mapping = ReadOnlyMapping::Open(path);
  if (!mapping) {
    std::fprintf(stderr, "pbrickctl: fsck: cannot read the store: %s\n", mapping.error().message().c_str());
    if (g_json) {
      std::printf("{\"store\":%s,\"clean\":false,\"error\":%s}\n", json_string(path).c_str(),
                  json_string(mapping.error().message()).c_str());
    }
    return kCannotOpen;
  }
  Result<std::unique_ptr<ReadOnlyMapping>> slow_mapping = std::unique_ptr<ReadOnlyMapping>();
  if (!slow_path.empty()) {
    slow_mapping = ReadOnlyMapping::Open(slow_path);
    if (!slow_mapping) {
      std::fprintf(stderr, "pbrickctl: fsck: cannot read the slow tier: %s\n",
                   slow_mapping.error().message().c_str());
      if (g_json) {
        std::printf("{\"store\":%s,\"clean\":false,\"error\":%s}\n", json_string(path).c_str(),
                    json_string(slow_mapping.error().message()).c_str());
      }
      return kCannotOpen;
    }
  }
  const ReadOnlyMapping* slow = slow_mapping->get();
  const StoreCheckReport r = Store::Check((*mapping)->base(), (*mapping)->size(), slow ? slow->base() : nullptr,
                                          slow ? slow->size() : 0);
  if (g_json) {
    std::printf("{\"store\":%s,\"clean\":%s,\"superblock_error\":%s", json_string(path).c_str(),
                r.clean() ? "true" : "false",
                r.superblock_error.empty() ? "null" : json_string(r.superblock_error).c_str());
    if (r.superblock_error.empty()) {
      std::printf(
          ",\"layout_version\":%u,\"upgrade_interrupted\":%s,\"uuid\":\"%s\",\"slot_count\":%llu,"
          "\"allocated_blocks\":%llu,\"entries_to_upgrade\":%llu",
          r.layout_version, r.upgrade_interrupted ? "true" : "false", format_uuid(r.uuid).c_str(),
          static_cast<unsigned long long>(r.slot_count), static_cast<unsigned long long>(r.allocated_blocks),
          static_cast<unsigned long long>(r.entries_to_upgrade));
      std::printf(",\"slow_tier_unchecked\":%s", r.slow_unchecked ? "true" : "false");
      std::printf(",\"slow_tier_not_attached\":%s", r.slow_not_attached ? "true" : "false");
      if (r.slow_checked) {
        std::printf(",\"slow_store\":%s,\"slow_slot_count\":%llu,\"slow_blocks\":%llu",
                    json_string(slow_path).c_str(), static_cast<unsigned long long>(r.slow_slot_count),
                    static_cast<unsigned long long>(r.slow_blocks));
      }
    }
    std::printf(",\"problems\":[");
    for (size_t i = 0; i < r.map_problems.size(); i++) {
      std::printf("%s{\"entry\":%llu,\"message\":%s}", i ? "," : "",
                  static_cast<unsigned long long>(r.map_problems[i].entry),
                  json_string(r.map_problems[i].what).c_str());
    }
    std::printf("]}\n");
    return r.clean() ? 0 : kProblemsFound;
  }
  if (!r.superblock_error.empty()) {
    std::printf("store %s: superblock: %s\n", path.c_str(), r.superblock_error.c_str());
    std::printf("store %s: not checked further: the superblock is not valid\n", path.c_str());
    return kProblemsFound;
  }
  std::printf("store %s: layout version %u, uuid %s, %llu slots, %llu blocks allocated\n", path.c_str(),
              r.layout_version, format_uuid(r.uuid).c_str(), static_cast<unsigned long long>(r.slot_count),
              static_cast<unsigned long long>(r.allocated_blocks));
  if (r.slow_not_attached) {
    std::printf("store %s: slow tier %s is not attached yet (blank, or its format was cut short): nothing of the "
                "store is on it; the brick formats it when it starts with it\n",
                path.c_str(), slow_path.c_str());
  }
  if (r.slow_checked) {
    std::printf("store %s: slow tier %s, %llu slots, %llu of the blocks on it\n", path.c_str(), slow_path.c_str(),
                static_cast<unsigned long long>(r.slow_slot_count), static_cast<unsigned long long>(r.slow_blocks));
  }
  if (r.layout_version == 1) {
    std::printf("store %s: %llu map entries without checksums (layout version 1%s); the brick upgrades them "
                "when it next opens the store\n",
                path.c_str(), static_cast<unsigned long long>(r.entries_to_upgrade),
                r.upgrade_interrupted ? ", an upgrade was interrupted" : "");
  }
  for (const auto& p : r.map_problems) std::printf("%s\n", p.what.c_str());
  if (r.clean()) {
    if (r.slow_unchecked) {
      // Not "clean" alone: part of the map was not read.
      std::printf("store %s: clean as far as checked; it has a slow tier whose map entries were not read "
                  "(give --slow-store)\n",
                  path.c_str());
      return 0;
    }
    std::printf("store %s: clean\n", path.c_str());
    return 0;
  }
  std::printf("store %s: %zu problem%s found in the map; the brick refuses to open it\n", path.c_str(),
              r.map_problems.size(), r.map_problems.size() == 1 ? "" : "s");
  return kProblemsFound;
}

int cmd_stat(BrickClient& client) {
  auto s = client.stat();
  if (!s) return fail(s.error());
  const char* kind = s->store_kind == proto::kStorePmem ? "pmem" : "file";
  if (g_json) {
    std::printf(
        "{\"uuid\":\"%s\",\"protocol_version\":%u,\"store\":\"%s\",\"block_size\":%u,"
        "\"capacity_blocks\":%llu,\"free_blocks\":%llu,\"allocated_blocks\":%llu,\"mapped_blocks\":%llu,"
        "\"fast_capacity_blocks\":%llu,\"fast_free_blocks\":%llu,\"slow_capacity_blocks\":%u,"
        "\"slow_free_blocks\":%u}\n",
        format_uuid(s->brick_uuid).c_str(), s->protocol_version, kind, s->block_size,
        static_cast<unsigned long long>(s->capacity_blocks), static_cast<unsigned long long>(s->free_blocks),
        static_cast<unsigned long long>(s->allocated_blocks), static_cast<unsigned long long>(s->mapped_blocks),
        static_cast<unsigned long long>(s->capacity_blocks - s->slow_capacity_blocks),
        static_cast<unsigned long long>(s->free_blocks - s->slow_free_blocks), s->slow_capacity_blocks,
        s->slow_free_blocks);
    return 0;
  }
  auto line = [](const char* k, uint64_t blocks) {
    std::printf("%-10s %llu blocks (%s)\n", k, static_cast<unsigned long long>(blocks),
                format_size(blocks * proto::kBlockSize).c_str());
  };
  std::printf("%-10s %s\n", "uuid", format_uuid(s->brick_uuid).c_str());
  std::printf("%-10s %u\n", "protocol", s->protocol_version);
  std::printf("%-10s %s\n", "store", kind);
  std::printf("%-10s %s\n", "block", format_size(s->block_size).c_str());
  line("capacity", s->capacity_blocks);
  line("allocated", s->allocated_blocks);
  line("mapped", s->mapped_blocks);
  line("free", s->free_blocks);
  if (s->slow_capacity_blocks > 0) {
    // Per tier: capacity, used, free.
    auto tier = [](const char* name, uint64_t capacity, uint64_t free) {
      std::printf("%-10s %llu blocks (%s): %llu used, %llu free\n", name, static_cast<unsigned long long>(capacity),
                  format_size(capacity * proto::kBlockSize).c_str(), static_cast<unsigned long long>(capacity - free),
                  static_cast<unsigned long long>(free));
    };
    tier("fast tier", s->capacity_blocks - s->slow_capacity_blocks, s->free_blocks - s->slow_free_blocks);
    tier("slow tier", s->slow_capacity_blocks, s->slow_free_blocks);
  }
  return 0;
}

int cmd_list(BrickClient& client) {
  auto extents = client.list_all();
  if (!extents) return fail(extents.error());
  uint64_t total = 0;
  for (const auto& e : *extents) total += e.block_count;
  if (g_json) {
    std::printf("{\"allocated_blocks\":%llu,\"extents\":[", static_cast<unsigned long long>(total));
    for (size_t i = 0; i < extents->size(); i++) {
      const auto& e = (*extents)[i];
      std::printf("%s{\"start\":\"%s\",\"blocks\":%llu,\"mapped\":%s,\"tier\":%u}", i ? "," : "",
                  format_hex(e.start_vaddr).c_str(), static_cast<unsigned long long>(e.block_count),
                  (e.extent_flags & proto::kExtentMapped) ? "true" : "false", e.tier);
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf("%-20s %-20s %10s %-10s %-8s %s\n", "START", "END", "BLOCKS", "SIZE", "STATE", "TIER");
  for (const auto& e : *extents) {
    uint64_t end = e.start_vaddr + (e.block_count - 1) * proto::kBlockSize + (proto::kBlockSize - 1);
    const std::string tier = e.tier == 0 ? "fast" : e.tier == 1 ? "slow" : std::to_string(e.tier);
    std::printf("%-20s %-20s %10llu %-10s %-8s %s\n", format_hex(e.start_vaddr).c_str(), format_hex(end).c_str(),
                static_cast<unsigned long long>(e.block_count), format_size(e.block_count * proto::kBlockSize).c_str(),
                (e.extent_flags & proto::kExtentMapped) ? "mapped" : "unmapped", tier.c_str());
  }
  std::printf("%llu blocks allocated in %zu extents\n", static_cast<unsigned long long>(total), extents->size());
  return 0;
}

void print_handle(uint64_t vaddr, const proto::MapReply& h) {
  if (g_json) {
    std::printf("{\"vaddr\":\"%s\",\"rkey\":\"%s\",\"remote_addr\":\"%s\",\"length\":%llu,\"flags\":\"%s\"}\n",
                format_hex(vaddr).c_str(), format_hex(h.rkey).c_str(), format_hex(h.remote_addr).c_str(),
                static_cast<unsigned long long>(h.length), map_flags_string(h.map_flags).c_str());
  } else {
    std::printf("vaddr %s rkey %s remote_addr %s length %llu flags %s\n", format_hex(vaddr).c_str(),
                format_hex(h.rkey).c_str(), format_hex(h.remote_addr).c_str(),
                static_cast<unsigned long long>(h.length), map_flags_string(h.map_flags).c_str());
  }
  std::fflush(stdout);
}

// An error reply carries an errno and no text (docs/protocol.md, 3.1): an
// EINVAL for an address inside a block (a block is named by its first byte)
// gets the rule it broke.
Error explain_addr(const Error& e, uint64_t vaddr) {
  if (e.errnum() != EINVAL || vaddr % proto::kBlockSize == 0) return e;
  return Error(EINVAL, e.context() + ": ADDR must be a multiple of the " + format_size(proto::kBlockSize) + " block");
}

int cmd_map(BrickClient& client, const std::vector<std::string>& args) {
  uint32_t flags = proto::kMapWrite;
  bool hold = false;
  std::vector<std::string> pos;
  for (size_t i = 1; i < args.size(); i++) {
    if (args[i] == "--ro") flags &= ~proto::kMapWrite;
    else if (args[i] == "--shared") flags |= proto::kMapShared;
    else if (args[i] == "--hold") hold = true;
    else if (args[i].rfind("--", 0) == 0) return usage_error("map: unknown option '" + args[i] + "'");
    else pos.push_back(args[i]);
  }
  if (pos.size() != 1) return usage_error("map: expected ADDR");
  auto vaddr = parse_u64(pos[0], "ADDR");
  if (!vaddr) return usage_error(vaddr.error().context());
  auto h = client.map(*vaddr, flags);
  if (!h) return fail(explain_addr(h.error(), *vaddr));
  print_handle(*vaddr, *h);
  if (hold) {
    // Keep the connection (and with it the mapping) until stdin reaches EOF or
    // a signal asks us to stop; then unmap explicitly.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_UNBLOCK, &mask, nullptr);
    uint8_t buf[256];
    while (::read(STDIN_FILENO, buf, sizeof buf) > 0) {
    }
    Status st = client.unmap(*vaddr);
    if (!st) return fail(st.error());
  }
  return 0;
}

// Maps each block touched by [pos, pos+len) as needed, allocating for writes.
struct BlockCursor {
  uint64_t vaddr = UINT64_MAX;
  proto::MapReply handle{};
};

Status ensure_mapped(BrickClient& client, BlockCursor& cur, uint64_t vaddr, bool for_write) {
  if (cur.vaddr == vaddr) return Status::Ok();
  if (cur.vaddr != UINT64_MAX) PBRICK_TRY(client.unmap(cur.vaddr));
  cur.vaddr = UINT64_MAX;
  if (for_write) {
    Status st = client.alloc(vaddr);
    if (!st && st.error().errnum() != EEXIST) return st;
  }
  auto h = client.map(vaddr, for_write ? proto::kMapWrite : proto::kMapShared);
  if (!h) return h.error();
  cur.vaddr = vaddr;
  cur.handle = *h;
  return Status::Ok();
}

int cmd_write(BrickClient& client, const std::vector<std::string>& args) {
  if (args.size() != 3) return usage_error("write: expected ADDR OFFSET");
  auto addr = parse_u64(args[1], "ADDR");
  if (!addr) return usage_error(addr.error().context());
  auto offset = parse_u64(args[2], "OFFSET");
  if (!offset) return usage_error(offset.error().context());
  auto data = read_stdin();
  if (!data) return fail(data.error());
  uint64_t pos = *addr + *offset;
  if (pos < *addr || (!data->empty() && pos + data->size() - 1 < pos)) {
    return usage_error("write: ADDR+OFFSET+length exceeds the 64-bit address space");
  }
  // Each block is persisted before the cursor moves on (and unmaps it).
  const bool persist_rpc = (client.hello().features & proto::kFeaturePersistRpc) != 0;
  BlockCursor cur;
  size_t done = 0;
  while (done < data->size()) {
    uint64_t p = pos + done;
    uint64_t block = p & ~(proto::kBlockSize - 1);
    uint64_t in_block = p - block;
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(data->size() - done, proto::kBlockSize - in_block));
    Status st = ensure_mapped(client, cur, block, true);
    if (!st) return fail(st.error());
    st = client.write(cur.handle.rkey, cur.handle.remote_addr + in_block, {data->data() + done, chunk});
    if (!st) return fail(st.error());
    if (persist_rpc) {
      proto::PersistRange range{cur.handle.rkey, cur.handle.remote_addr + in_block, chunk};
      st = client.persist({&range, 1});
      if (!st) return fail(st.error());
    }
    done += chunk;
  }
  if (cur.vaddr != UINT64_MAX && persist_rpc) {
    Status st = client.unmap(cur.vaddr);
    if (!st) return fail(st.error());
  } else if (cur.vaddr != UINT64_MAX) {
    // Sync-read: a READ after the WRITEs returns only once they are persistent.
    uint8_t byte;
    Status st = client.read(cur.handle.rkey, cur.handle.remote_addr, {&byte, 1});
    if (!st) return fail(st.error().wrap("sync-read"));
    st = client.unmap(cur.vaddr);
    if (!st) return fail(st.error());
  }
  if (g_json) std::printf("{\"written\":%zu,\"persistent\":true}\n", data->size());
  return 0;
}

int cmd_read(BrickClient& client, const std::vector<std::string>& args) {
  if (args.size() != 4) return usage_error("read: expected ADDR OFFSET LENGTH");
  auto addr = parse_u64(args[1], "ADDR");
  if (!addr) return usage_error(addr.error().context());
  auto offset = parse_u64(args[2], "OFFSET");
  if (!offset) return usage_error(offset.error().context());
  auto length = parse_size(args[3], "LENGTH");
  if (!length) return usage_error(length.error().context());
  uint64_t pos = *addr + *offset;
  if (pos < *addr || (*length > 0 && pos + *length - 1 < pos)) {
    return usage_error("read: ADDR+OFFSET+LENGTH exceeds the 64-bit address space");
  }
  std::vector<uint8_t> buf(proto::kMaxIoSize);
  BlockCursor cur;
  uint64_t done = 0;
  while (done < *length) {
    uint64_t p = pos + done;
    uint64_t block = p & ~(proto::kBlockSize - 1);
    uint64_t in_block = p - block;
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(*length - done, proto::kBlockSize - in_block));
    Status st = ensure_mapped(client, cur, block, false);
    if (!st) return fail(st.error().wrap("read " + format_hex(block)));
    st = client.read(cur.handle.rkey, cur.handle.remote_addr + in_block, {buf.data(), chunk});
    if (!st) return fail(st.error());
    st = write_stdout(buf.data(), chunk);
    if (!st) return fail(st.error());
    done += chunk;
  }
  return 0;
}

int cmd_raw(BrickClient& client, const std::vector<std::string>& args, bool is_write) {
  if (args.size() != (is_write ? 3u : 4u)) {
    return usage_error(is_write ? "rwrite: expected RKEY RADDR" : "rread: expected RKEY RADDR LENGTH");
  }
  auto rkey = parse_u64(args[1], "RKEY");
  if (!rkey) return usage_error(rkey.error().context());
  if (*rkey > UINT32_MAX) return usage_error("RKEY: must fit in 32 bits");
  auto raddr = parse_u64(args[2], "RADDR");
  if (!raddr) return usage_error(raddr.error().context());
  if (is_write) {
    auto data = read_stdin();
    if (!data) return fail(data.error());
    if (data->empty() || data->size() > proto::kMaxIoSize) return usage_error("rwrite: 1 byte to 2 MiB of data");
    Status st = client.write(static_cast<uint32_t>(*rkey), *raddr, *data);
    if (!st) return fail(st.error());
    return 0;
  }
  auto length = parse_size(args[3], "LENGTH");
  if (!length) return usage_error(length.error().context());
  if (*length == 0 || *length > proto::kMaxIoSize) return usage_error("LENGTH: 1 byte to 2 MiB");
  std::vector<uint8_t> buf(*length);
  Status st = client.read(static_cast<uint32_t>(*rkey), *raddr, buf);
  if (!st) return fail(st.error());
  st = write_stdout(buf.data(), buf.size());
  if (!st) return fail(st.error());
  return 0;
}

int cmd_addr(BrickClient& client, const std::vector<std::string>& args) {
  if (args.size() != 2) return usage_error(args[0] + ": expected ADDR");
  auto vaddr = parse_u64(args[1], "ADDR");
  if (!vaddr) return usage_error(vaddr.error().context());
  Status st = args[0] == "alloc" ? client.alloc(*vaddr) : args[0] == "free" ? client.free(*vaddr) : client.unmap(*vaddr);
  if (!st) return fail(explain_addr(st.error(), *vaddr));
  if (g_json) std::printf("{\"%s\":\"%s\",\"ok\":true}\n", args[0].c_str(), format_hex(*vaddr).c_str());
  return 0;
}

// `ddio apply`: what a brick's unit runs before the brick starts.
int cmd_ddio_apply(const ClusterConfig& config, const BrickConfig& brick) {
  (void)config;
  Status st = ddio_apply(brick.nic);
  if (!st) return fail(st.error().wrap("brick " + brick.name + ": ddio " + ddio_mode_name(brick.nic.ddio)));
  if (brick.persistence == Persistence::kSyncRead && brick.transport == Transport::kRdma) {
    // Over RDMA sync-read is only correct when the NIC's writes bypass the CPU
    // cache (over TCP the brick's CPU persists before answering).
    if (brick.nic.ddio != DdioMode::kOff || brick.nic.netdev.empty()) {
      return fail(Error(EPERM, "brick " + brick.name +
                                   ": persistence sync-read needs `nic: {ddio: off, netdev: ...}` (or use persistence: rpc)"));
    }
    auto state = ddio_status(brick.nic.netdev);
    if (!state) return fail(state.error().wrap("brick " + brick.name));
    if (state->state() != DdioState::kOff) {
      return fail(Error(EPERM, "brick " + brick.name + ": DDIO of root port " + state->root_port + " above " +
                                   brick.nic.netdev + " is " + ddio_state_name(state->state()) +
                                   ", not off: sync-read would not be persistent; refusing"));
    }
    std::printf("brick %s: DDIO off on %s (root port %s): sync-read persistence holds\n", brick.name.c_str(),
                brick.nic.netdev.c_str(), state->root_port.c_str());
  } else {
    std::printf("brick %s: ddio %s applied\n", brick.name.c_str(), ddio_mode_name(brick.nic.ddio));
  }
  return 0;
}

// Runs a subcommand implemented as `int main(argc, argv)`.
int run_sub(int (*fn)(int, char**), std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return fn(static_cast<int>(args.size()), argv.data());
}

}  // namespace

int main(int argc, char** argv) {
  set_log_prefix(false);
  signal(SIGPIPE, SIG_IGN);
  // PBRICK_TARGET / PBRICK_KEY_FILE are defaults for --target / --key-file
  // only: a brick named by --config/--brick brings its own address and key.
  const std::string env_target = getenv("PBRICK_TARGET") ? getenv("PBRICK_TARGET") : "";
  const std::string env_key_file = getenv("PBRICK_KEY_FILE") ? getenv("PBRICK_KEY_FILE") : "";
  std::string target_text, key_file;
  std::string config_file = getenv("PBRICK_CONFIG") ? getenv("PBRICK_CONFIG") : "";
  std::string brick_name;
  int timeout_ms = 10000;
  std::optional<Transport> transport;
  std::vector<std::string> args;
  // Global options come before the command; everything after it is the command's.
  int i = 1;
  for (; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)flag;
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--json") {
      g_json = true;
    } else if (a == "--target" || a == "-t") {
      const char* v = value("--target");
      if (!v) return usage_error("--target needs HOST:PORT");
      target_text = v;
    } else if (a.rfind("--target=", 0) == 0) {
      target_text = a.substr(9);
    } else if (a == "--key-file") {
      const char* v = value("--key-file");
      if (!v) return usage_error("--key-file needs a FILE");
      key_file = v;
    } else if (a.rfind("--key-file=", 0) == 0) {
      key_file = a.substr(11);
    } else if (a == "--config") {
      const char* v = value("--config");
      if (!v) return usage_error("--config needs a FILE");
      config_file = v;
    } else if (a.rfind("--config=", 0) == 0) {
      config_file = a.substr(9);
    } else if (a == "--brick") {
      const char* v = value("--brick");
      if (!v) return usage_error("--brick needs a NAME");
      brick_name = v;
    } else if (a.rfind("--brick=", 0) == 0) {
      brick_name = a.substr(8);
    } else if (a == "--transport" || a.rfind("--transport=", 0) == 0) {
      const char* v = a == "--transport" ? value("--transport") : argv[i] + 12;
      if (!v) return usage_error("--transport needs tcp or rdma");
      auto t = parse_transport(v, "--transport");
      if (!t) return usage_error(t.error().context());
      transport = *t;
    } else if (a == "--timeout" || a.rfind("--timeout=", 0) == 0) {
      const char* v = a == "--timeout" ? value("--timeout") : argv[i] + 10;
      if (!v) return usage_error("--timeout needs milliseconds");
      auto t = parse_u64(v, "--timeout");
      if (!t || *t == 0 || *t > 3600000) return usage_error("--timeout: milliseconds, 1..3600000");
      timeout_ms = static_cast<int>(*t);
    } else if (a.rfind("-", 0) == 0 && a != "-") {
      return usage_error("unknown option '" + a + "'");
    } else {
      break;
    }
  }
  for (; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--json") {
      g_json = true;
      continue;
    }
    args.push_back(a);
  }
  if (args.empty()) return usage_error("missing command");
  const std::string& cmd = args[0];

  if (cmd == "config") {
    if (args.size() < 2 || args[1] != "check") return usage_error("config: expected 'config check FILE'");
    return run_sub(config_check_main, {args.begin() + 1, args.end()});
  }
  if (cmd == "fsck") return cmd_fsck(args);
  if (cmd == "ddio" && !(args.size() >= 2 && args[1] == "apply")) {
    std::vector<std::string> sub(args.begin(), args.end());
    if (g_json) sub.push_back("--json");
    return run_sub(ddio_main, sub);
  }

  // The brick named by --config/--brick supplies the address and the key.
  std::optional<ClusterConfig> config;
  const BrickConfig* brick = nullptr;
  if (cmd == "ddio") {
    for (size_t k = 2; k < args.size(); k++) {
      if (args[k] == "--brick" && k + 1 < args.size()) {
        brick_name = args[++k];
      } else if (args[k].rfind("--brick=", 0) == 0) {
        brick_name = args[k].substr(8);
      } else {
        return usage_error("ddio apply: unexpected argument '" + args[k] + "'");
      }
    }
    if (config_file.empty() || brick_name.empty()) return usage_error("ddio apply needs --config FILE and --brick NAME");
  }
  if (!brick_name.empty() && config_file.empty()) return usage_error("--brick needs --config FILE");
  if (!brick_name.empty() && !target_text.empty()) {
    return usage_error("--target and --brick both say which brick: give one of them");
  }
  if (!config_file.empty() && !brick_name.empty()) {
    auto loaded = load_cluster_config(config_file);
    if (!loaded) {
      std::fprintf(stderr, "pbrickctl: %s\n", loaded.error().context().c_str());
      return 1;
    }
    config = std::move(*loaded);
    brick = config->find_brick(brick_name);
    if (brick == nullptr) return usage_error("--brick: no brick named '" + brick_name + "' in " + config_file);
    target_text = brick->endpoint().to_string();
    if (key_file.empty()) key_file = brick->key_file;
    if (!transport) transport = brick->transport;
  }
  if (brick == nullptr) {
    if (target_text.empty()) target_text = env_target;
    if (key_file.empty()) key_file = env_key_file;
  }
  if (cmd == "ddio") return cmd_ddio_apply(*config, *brick);
  static const char* const kCommands[] = {"stat", "list", "alloc", "free", "map", "unmap",
                                          "write", "read", "rread", "rwrite"};
  bool known = false;
  for (const char* c : kCommands) known = known || cmd == c;
  if (!known) return usage_error("unknown command '" + cmd + "'");

  if (target_text.empty()) {
    return usage_error("--target HOST:PORT (or --config FILE --brick NAME) is required (or set PBRICK_TARGET)");
  }
  auto endpoint = parse_endpoint(target_text, "--target");
  if (!endpoint) return usage_error(endpoint.error().context());
  ClientOptions options;
  options.endpoint = *endpoint;
  options.timeout_ms = timeout_ms;
  options.transport = transport.value_or(Transport::kTcp);
  // Over RDMA durability is asked for with PERSIST, which every brick serves;
  // sync-read there depends on how the brick's NIC is set up.
  if (options.transport == Transport::kRdma) options.features = proto::kFeaturePersistRpc;
  if (!key_file.empty()) {
    auto key = load_key_file(key_file);
    if (!key) return fail(key.error().wrap("--key-file"));
    options.key = std::move(*key);
  }
  auto client = BrickClient::Connect(options);
  if (!client) return fail(client.error());
  BrickClient& c = **client;

  if (cmd == "stat") return args.size() == 1 ? cmd_stat(c) : usage_error("stat takes no arguments");
  if (cmd == "list") return args.size() == 1 ? cmd_list(c) : usage_error("list takes no arguments");
  if (cmd == "alloc" || cmd == "free" || cmd == "unmap") return cmd_addr(c, args);
  if (cmd == "map") return cmd_map(c, args);
  if (cmd == "write") return cmd_write(c, args);
  if (cmd == "read") return cmd_read(c, args);
  if (cmd == "rread") return cmd_raw(c, args, false);
  return cmd_raw(c, args, true);
}
