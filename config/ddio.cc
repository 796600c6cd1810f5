#include "config/ddio.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/unique_fd.h"
#include "common/units.h"

namespace pbrick {
namespace {

constexpr uint16_t kIntelVendorId = 0x8086;

// Root ports whose perfctrlsts layout (0x180 bits 3 and 7, 0x184 bit 9) is
// documented for the family; device ids from the PCI ID repository.
struct RootPortFamily {
  uint16_t first;
  uint16_t last;
  const char* platform;
};
constexpr RootPortFamily kSupportedRootPorts[] = {
    {0x2f01, 0x2f0b, "Haswell-EP (Xeon E5/E7 v3)"},
    {0x6f01, 0x6f0b, "Broadwell-EP (Xeon E5/E7 v4)"},
    {0x2030, 0x2033, "Skylake-SP/Cascade Lake-SP (Xeon Scalable 1st/2nd gen)"},
};
// Known Intel root ports of a later IIO where Intel documents only a
// BIOS-wide DDIO switch (pmem.io "Direct Write to PMem"); refused with that hint.
constexpr RootPortFamily kRefusedRootPorts[] = {
    {0x347a, 0x347d, "Ice Lake-SP (Xeon Scalable 3rd gen)"},
};

const RootPortFamily* find_family(const RootPortFamily* begin, const RootPortFamily* end, uint16_t device) {
  for (const RootPortFamily* f = begin; f != end; ++f) {
    if (device >= f->first && device <= f->last) return f;
  }
  return nullptr;
}

std::string hex16(uint16_t v) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%04x", v);
  return buf;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string supported_list() {
  std::string out;
  for (const RootPortFamily& f : kSupportedRootPorts) {
    if (!out.empty()) out += ", ";
    out += std::string(f.platform) + " " + hex16(f.first) + "-" + hex16(f.last);
  }
  return out;
}

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

bool all_hex(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!is_hex(c)) return false;
  }
  return true;
}

// "0000:17:00.0" (domains may have more than 4 digits, e.g. VMD's 10000).
bool is_bdf(std::string_view s) {
  size_t c1 = s.find(':');
  if (c1 == std::string_view::npos || c1 < 4) return false;
  std::string_view rest = s.substr(c1 + 1);
  return all_hex(s.substr(0, c1)) && rest.size() == 7 && all_hex(rest.substr(0, 2)) && rest[2] == ':' &&
         all_hex(rest.substr(3, 2)) && rest[5] == '.' && rest[6] >= '0' && rest[6] <= '7';
}

// "pci0000:17": a host bridge directory under /sys/devices.
bool is_host_bridge(std::string_view s) {
  if (s.substr(0, 3) != "pci") return false;
  s.remove_prefix(3);
  size_t c = s.find(':');
  return c != std::string_view::npos && c >= 4 && all_hex(s.substr(0, c)) && s.size() == c + 3 &&
         all_hex(s.substr(c + 1));
}

Result<std::string> real_path(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) == nullptr) return errno_error("resolve " + path);
  return std::string(buf);
}

Result<uint16_t> read_id_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_error("open " + path);
  char buf[32];
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n < 0) return errno_error("read " + path);
  std::string_view text(buf, static_cast<size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  auto value = parse_u64(text, path);
  if (!value || *value > 0xffff) return Error(EINVAL, path + ": expected a 16-bit id such as 0x8086, got '" +
                                                          std::string(text) + "'");
  return static_cast<uint16_t>(*value);
}

struct PciLocation {
  std::string function;
  std::string root_port;
  std::string root_port_dir;
};

// netdev -> its PCI function and the root port directly below the host
// bridge. Virtual interfaces (lo, veth, bridges, tun) have no `device` link;
// non-PCI ones (platform, virtio, usb) resolve outside /sys/devices/pci*.
Result<PciLocation> locate(const std::string& sysfs_root, const std::string& netdev) {
  if (netdev.empty() || netdev.size() > 15 || netdev.find('/') != std::string::npos || netdev == "." ||
      netdev == "..") {
    return Error(EINVAL, "invalid network interface name '" + netdev + "'");
  }
  std::string root;
  if (!sysfs_root.empty()) {
    auto r = real_path(sysfs_root);
    if (!r) return r.error().wrap("sysfs root (PBRICK_SYSFS_ROOT)");
    root = *r == "/" ? "" : *r;
  }
  std::string class_dir = root + "/sys/class/net/" + netdev;
  struct stat st;
  if (::lstat(class_dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return Error(ENODEV, "no network interface '" + netdev + "' (" + class_dir + " is missing)");
    return errno_error("stat " + class_dir);
  }
  std::string link = class_dir + "/device";
  if (::lstat(link.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return Error(ENODEV, "network interface '" + netdev +
                               "' has no device in sysfs: it is a virtual interface (loopback, veth, bridge, "
                               "tun, ...), not a PCIe NIC, so there is no root port whose DDIO could be set");
    }
    return errno_error("stat " + link);
  }
  auto resolved = real_path(link);
  if (!resolved) return resolved.error();
  std::string prefix = root + "/sys/devices/";
  if (resolved->compare(0, prefix.size(), prefix) != 0) {
    return Error(ENODEV, "network interface '" + netdev + "' is not a PCI device (" + link + " resolves to " +
                             *resolved + ")");
  }
  std::vector<std::string> parts;
  std::string_view rest = std::string_view(*resolved).substr(prefix.size());
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    parts.emplace_back(rest.substr(0, slash));
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  if (parts.empty() || !is_host_bridge(parts[0])) {
    return Error(ENODEV, "network interface '" + netdev + "' is not a PCI device (its device is " + *resolved +
                             ", not under a PCI host bridge /sys/devices/pciDDDD:BB)");
  }
  size_t chain = 1;
  while (chain < parts.size() && is_bdf(parts[chain])) chain++;
  size_t bdfs = chain - 1;
  if (bdfs == 0) {
    return Error(ENODEV, "network interface '" + netdev + "' has no PCI function under host bridge " + parts[0]);
  }
  // Devices such as virtio-net hang a bus node ("virtio2") below the PCI
  // function; name it so the message matches what the operator sees.
  if (bdfs == 1) {
    std::string what = chain < parts.size() ? " is " + parts.back() + " on PCI function " + parts[1] + ", which"
                                            : " (PCI " + parts[1] + ")";
    return Error(ENODEV, "network interface '" + netdev + "'" + what + " sits directly on host bridge " + parts[0] +
                             ": there is no PCIe root port above it to configure");
  }
  return PciLocation{parts[chain - 1], parts[1], prefix + parts[0] + "/" + parts[1]};
}

uint32_t le32(const unsigned char* b) {
  return static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 | static_cast<uint32_t>(b[2]) << 16 |
         static_cast<uint32_t>(b[3]) << 24;
}

Result<uint32_t> read_dword(int fd, const std::string& path, uint32_t offset) {
  unsigned char b[4];
  ssize_t n;
  do {
    n = ::pread(fd, b, sizeof b, offset);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno_error("read " + path + " at " + format_hex(offset));
  if (n != 4) {
    // The kernel returns only the first 64 bytes of config space to readers
    // without CAP_SYS_ADMIN, so a short read is a privilege problem unless
    // we already are root (then extended config space is not reachable).
    if (::geteuid() != 0) {
      return Error(EACCES, "read " + path + " at " + format_hex(offset) +
                               ": only the first 64 bytes of PCI config space are readable without "
                               "CAP_SYS_ADMIN; run as root");
    }
    return Error(EIO, "read " + path + " at " + format_hex(offset) +
                          ": config space ends early; extended (PCIe) config space is not accessible");
  }
  return le32(b);
}

Status write_dword(int fd, const std::string& path, uint32_t offset, uint32_t value) {
  // One aligned 4-byte pwrite: sysfs turns it into a single dword config
  // write, so the register never holds a half-updated value.
  unsigned char b[4] = {static_cast<unsigned char>(value), static_cast<unsigned char>(value >> 8),
                        static_cast<unsigned char>(value >> 16), static_cast<unsigned char>(value >> 24)};
  ssize_t n;
  do {
    n = ::pwrite(fd, b, sizeof b, offset);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    int e = errno;
    std::string ctx = "write " + path + " at " + format_hex(offset);
    if (e == EPERM || e == EACCES) {
      ctx += " (needs CAP_SYS_ADMIN; a kernel in lockdown mode refuses PCI config writes even to root)";
    }
    return Error(e, ctx);
  }
  if (n != 4) return Error(EIO, "write " + path + " at " + format_hex(offset) + ": short write");
  return Status::Ok();
}

Result<DdioRegisters> read_registers(int fd, const std::string& path) {
  DdioRegisters r;
  auto p0 = read_dword(fd, path, kPerfCtrlSts0Offset);
  if (!p0) return p0.error();
  auto p1 = read_dword(fd, path, kPerfCtrlSts1Offset);
  if (!p1) return p1.error();
  r.perfctrlsts_0 = *p0;
  r.perfctrlsts_1 = *p1;
  return r;
}

// Identity and support checks shared by status and set.
Result<DdioPortState> identify(const std::string& netdev, const std::string& sysfs_root) {
  auto loc = locate(sysfs_root, netdev);
  if (!loc) return loc.error();
  DdioPortState s;
  s.netdev = netdev;
  s.function = loc->function;
  s.root_port = loc->root_port;
  s.root_port_path = loc->root_port_dir;
  auto vendor = read_id_file(loc->root_port_dir + "/vendor");
  if (!vendor) return vendor.error();
  auto device = read_id_file(loc->root_port_dir + "/device");
  if (!device) return device.error();
  s.vendor_id = *vendor;
  s.device_id = *device;
  std::string who = "root port " + s.root_port + " of " + netdev;
  if (s.vendor_id != kIntelVendorId) {
    return Error(ENOTSUP, who + " is not an Intel device (vendor " + hex16(s.vendor_id) +
                              "): DDIO is an Intel Xeon feature, nothing to control here");
  }
  const RootPortFamily* family = find_family(std::begin(kSupportedRootPorts), std::end(kSupportedRootPorts),
                                             s.device_id);
  if (family == nullptr) {
    std::string msg = who + " is an Intel device " + hex16(s.device_id);
    if (const RootPortFamily* refused =
            find_family(std::begin(kRefusedRootPorts), std::end(kRefusedRootPorts), s.device_id)) {
      msg += " (" + std::string(refused->platform) +
             "), where per-root-port DDIO control is not available; disable DDIO in the BIOS setup instead";
    } else {
      msg += " whose DDIO registers pbrick does not know; supported root ports: " + supported_list();
    }
    return Error(ENOTSUP, msg);
  }
  s.platform = family->platform;
  return s;
}

std::string json_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string state_json(const DdioPortState& s) {
  const DdioRegisters& r = s.registers;
  std::string out = "{";
  out += "\"netdev\":\"" + json_escape(s.netdev) + "\",";
  out += "\"function\":\"" + json_escape(s.function) + "\",";
  out += "\"root_port\":\"" + json_escape(s.root_port) + "\",";
  out += "\"vendor\":\"" + hex16(s.vendor_id) + "\",";
  out += "\"device\":\"" + hex16(s.device_id) + "\",";
  out += "\"platform\":\"" + json_escape(s.platform) + "\",";
  out += "\"state\":\"" + std::string(ddio_state_name(r.state())) + "\",";
  out += "\"perfctrlsts_0\":\"" + hex32(r.perfctrlsts_0) + "\",";
  out += "\"perfctrlsts_1\":\"" + hex32(r.perfctrlsts_1) + "\",";
  out += std::string("\"use_allocating_flow_wr\":") + (r.use_allocating_flow_wr() ? "true" : "false") + ",";
  out += std::string("\"nosnoopopwren\":") + (r.nosnoopopwren() ? "true" : "false") + ",";
  out += std::string("\"tphdis\":") + (r.tphdis() ? "true" : "false");
  out += "}";
  return out;
}

void print_table(const std::vector<DdioPortState>& states) {
  std::printf("%-15s %-14s %-14s %-6s %-7s %-13s %-13s\n", "NETDEV", "FUNCTION", "ROOT-PORT", "DEVICE", "STATE",
              "PERFCTRLSTS_0", "PERFCTRLSTS_1");
  for (const DdioPortState& s : states) {
    std::printf("%-15s %-14s %-14s %-6s %-7s %-13s %-13s\n", s.netdev.c_str(), s.function.c_str(),
                s.root_port.c_str(), hex16(s.device_id).c_str(), ddio_state_name(s.state()),
                hex32(s.registers.perfctrlsts_0).c_str(), hex32(s.registers.perfctrlsts_1).c_str());
  }
}

constexpr char kDdioUsage[] =
    "usage: pbrickctl ddio status|off|on --netdev NAME [--netdev NAME...] [--json]\n"
    "  status  show the DDIO state of the PCIe root port above each interface\n"
    "  off     disable DDIO there (needed by persistence: sync-read)\n"
    "  on      re-enable DDIO there\n"
    "Writing needs root (CAP_SYS_ADMIN). PBRICK_SYSFS_ROOT overrides the sysfs root.\n";

}  // namespace

const char* ddio_state_name(DdioState state) {
  switch (state) {
    case DdioState::kOff: return "off";
    case DdioState::kOn: return "on";
    case DdioState::kPartial: return "partial";
  }
  return "?";
}

DdioState DdioRegisters::state() const {
  if (!use_allocating_flow_wr() && !nosnoopopwren() && tphdis()) return DdioState::kOff;
  if (use_allocating_flow_wr() && !tphdis()) return DdioState::kOn;
  return DdioState::kPartial;
}

DdioRegisters DdioRegisters::with_ddio(bool enabled) const {
  DdioRegisters r = *this;
  if (enabled) {
    // NoSnoopOpWrEn is left as it is: it is a firmware setting (reset value
    // 0, and 0 after any `ddio off`), not part of turning DDIO back on.
    r.perfctrlsts_0 |= kUseAllocatingFlowWr;
    r.perfctrlsts_1 &= ~kTphDis;
  } else {
    r.perfctrlsts_0 &= ~(kUseAllocatingFlowWr | kNoSnoopOpWrEn);
    r.perfctrlsts_1 |= kTphDis;
  }
  return r;
}

std::string ddio_sysfs_root() {
  const char* env = std::getenv("PBRICK_SYSFS_ROOT");
  return env ? env : "";
}

Result<DdioPortState> ddio_status(const std::string& netdev) { return ddio_status(netdev, ddio_sysfs_root()); }

Result<DdioPortState> ddio_status(const std::string& netdev, const std::string& sysfs_root) {
  auto state = identify(netdev, sysfs_root);
  if (!state) return state.error();
  std::string config = state->root_port_path + "/config";
  UniqueFd fd(::open(config.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_error("open " + config);
  auto regs = read_registers(fd.get(), config);
  if (!regs) return regs.error();
  state->registers = *regs;
  return state;
}

namespace {

// The lock file of a root port (see ddio_hold_off), its directory made.
Result<UniqueFd> open_port_lock(const std::string& root_port, const std::string& sysfs_root) {
  const std::string dir = sysfs_root + "/run/pbrick";
  for (const std::string& d : {sysfs_root + "/run", dir}) {
    if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) return errno_error("mkdir " + d);
  }
  const std::string path = dir + "/ddio-" + root_port + ".lock";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_error("open " + path);
  return fd;
}

}  // namespace

Result<UniqueFd> ddio_hold_off(const std::string& netdev) { return ddio_hold_off(netdev, ddio_sysfs_root()); }

Result<UniqueFd> ddio_hold_off(const std::string& netdev, const std::string& sysfs_root) {
  auto port = identify(netdev, sysfs_root);
  if (!port) return port.error();
  auto lock = open_port_lock(port->root_port, sysfs_root);
  if (!lock) return lock.error();
  // Shared: several sync-read bricks may sit on one root port. Blocking: an
  // `on` holds it only for its write, and is then seen below.
  while (::flock(lock->get(), LOCK_SH) != 0) {
    if (errno != EINTR) return errno_error("flock the DDIO lock of root port " + port->root_port);
  }
  auto state = ddio_status(netdev, sysfs_root);
  if (!state) return state.error();
  if (state->state() != DdioState::kOff) {
    return Error(EIO, "DDIO is " + std::string(ddio_state_name(state->state())) + " on root port " +
                          state->root_port + " above " + netdev +
                          ", not off: sync-read persistence does not hold (pbrickctl ddio apply)");
  }
  return std::move(*lock);
}

Status ddio_set(const std::string& netdev, bool enabled) { return ddio_set(netdev, enabled, ddio_sysfs_root()); }

Status ddio_set(const std::string& netdev, bool enabled, const std::string& sysfs_root) {
  auto state = identify(netdev, sysfs_root);
  if (!state) return state.error();
  UniqueFd lock;
  if (enabled) {
    // Not under a brick that serves sync-read relying on this port's DDIO
    // being off (ddio_hold_off); held until the write is verified.
    auto l = open_port_lock(state->root_port, sysfs_root);
    if (!l) return l.error();
    if (::flock(l->get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        return Error(EBUSY, "DDIO on for root port " + state->root_port + " above " + netdev +
                                ": a running brick serves sync-read relying on DDIO off there; stop it first");
      }
      return errno_error("flock the DDIO lock of root port " + state->root_port);
    }
    lock = std::move(*l);
  }
  std::string config = state->root_port_path + "/config";
  UniqueFd fd(::open(config.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) {
    int e = errno;
    std::string ctx = "open " + config + " for writing";
    if (e == EACCES || e == EPERM) ctx += " (changing DDIO needs root: CAP_SYS_ADMIN)";
    return Error(e, ctx);
  }
  // Read-modify-write on what the register holds now, not on an earlier
  // status: firmware or another tool may have changed other bits meanwhile.
  auto before = read_registers(fd.get(), config);
  if (!before) return before.error();
  DdioRegisters target = before->with_ddio(enabled);
  if (target.perfctrlsts_0 != before->perfctrlsts_0) {
    PBRICK_TRY(write_dword(fd.get(), config, kPerfCtrlSts0Offset, target.perfctrlsts_0));
  }
  if (target.perfctrlsts_1 != before->perfctrlsts_1) {
    PBRICK_TRY(write_dword(fd.get(), config, kPerfCtrlSts1Offset, target.perfctrlsts_1));
  }
  auto after = read_registers(fd.get(), config);
  if (!after) return after.error();
  if (after->perfctrlsts_0 != target.perfctrlsts_0 || after->perfctrlsts_1 != target.perfctrlsts_1) {
    return Error(EIO, "DDIO " + std::string(enabled ? "on" : "off") + " on root port " + state->root_port +
                          " did not stick: wrote perfctrlsts_0=" + hex32(target.perfctrlsts_0) +
                          " perfctrlsts_1=" + hex32(target.perfctrlsts_1) + ", read back " +
                          hex32(after->perfctrlsts_0) + " " + hex32(after->perfctrlsts_1) +
                          " (firmware may have locked the register)");
  }
  return Status::Ok();
}

Status ddio_apply(const NicConfig& nic) {
  if (nic.ddio == DdioMode::kUnmanaged) return Status::Ok();
  if (nic.netdev.empty()) return Error(EINVAL, "nic.ddio is set but nic.netdev is empty");
  return ddio_set(nic.netdev, nic.ddio == DdioMode::kOn);
}

int ddio_main(int argc, char** argv) {
  std::string command;
  std::vector<std::string> netdevs;
  bool json = false;
  auto usage_error = [](const std::string& why) {
    std::fprintf(stderr, "pbrickctl ddio: %s\n%s", why.c_str(), kDdioUsage);
    return 2;
  };
  for (int i = 1; i < argc; i++) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kDdioUsage, stdout);
      return 0;
    } else if (arg == "--json") {
      json = true;
    } else if (arg == "--netdev") {
      if (i + 1 >= argc) return usage_error("--netdev needs an interface name");
      netdevs.emplace_back(argv[++i]);
    } else if (arg.rfind("--netdev=", 0) == 0) {
      netdevs.emplace_back(arg.substr(9));
    } else if (!arg.empty() && arg[0] == '-') {
      return usage_error("unknown option '" + std::string(arg) + "'");
    } else if (command.empty()) {
      command = arg;
    } else {
      return usage_error("unexpected argument '" + std::string(arg) + "'");
    }
  }
  if (command.empty()) return usage_error("missing command (status, off or on)");
  if (command != "status" && command != "off" && command != "on") {
    return usage_error("unknown command '" + command + "'");
  }
  if (netdevs.empty()) return usage_error("--netdev NAME is required");

  int rc = 0;
  std::vector<DdioPortState> states;
  for (const std::string& netdev : netdevs) {
    if (command != "status") {
      Status st = ddio_set(netdev, command == "on");
      if (!st.ok()) {
        std::fprintf(stderr, "pbrickctl ddio %s: %s\n", command.c_str(), st.error().message().c_str());
        rc = 1;
        continue;
      }
    }
    auto state = ddio_status(netdev);
    if (!state) {
      std::fprintf(stderr, "pbrickctl ddio %s: %s\n", command.c_str(), state.error().message().c_str());
      rc = 1;
      continue;
    }
    states.push_back(std::move(*state));
  }
  if (json) {
    std::string out = "{\"ports\":[";
    for (size_t i = 0; i < states.size(); i++) out += (i ? "," : "") + state_json(states[i]);
    out += "]}";
    std::printf("%s\n", out.c_str());
  } else if (!states.empty()) {
    print_table(states);
  }
  return rc;
}

}  // namespace pbrick
