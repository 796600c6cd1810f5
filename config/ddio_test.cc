#include "config/ddio.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace pbrick {
namespace {

// Register values with many unrelated bits set, so a test notices any write
// that touches more than the documented bits. 0x8a: Use_Allocating_Flow_Wr
// (bit 7) and NoSnoopOpWrEn (bit 3) set. perfctrlsts_1 has bit 8 set (the bit
// a byte-0x185-bit-0 tool would wrongly flip) and bit 9 (TPHDIS) clear.
constexpr uint32_t kP0On = 0xa5a55a8a;
constexpr uint32_t kP1On = 0x5a5aa5c5;

std::vector<uint8_t> config_space(uint32_t p0, uint32_t p1, size_t size = 4096) {
  std::vector<uint8_t> c(size);
  for (size_t i = 0; i < size; i++) c[i] = static_cast<uint8_t>(i * 7 + 3);
  for (int i = 0; i < 4 && 0x187 < size; i++) {
    c[0x180 + i] = static_cast<uint8_t>(p0 >> (8 * i));
    c[0x184 + i] = static_cast<uint8_t>(p1 >> (8 * i));
  }
  return c;
}

// A fake sysfs: real directories, real config-space files, real symlinks.
class FakeSysfs {
 public:
  FakeSysfs() {
    char tmpl[] = "/tmp/pbrick-ddio-test.XXXXXX";
    char* d = mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    root_ = d ? d : "/nonexistent";
    ::chmod(root_.c_str(), 0755);  // the unprivileged-user test walks it too
  }
  ~FakeSysfs() { std::system(("rm -rf '" + root_ + "'").c_str()); }

  const std::string& root() const { return root_; }

  // devices/<rel> with vendor, device and config files.
  void add_pci(const std::string& rel, uint16_t vendor, uint16_t device, const std::vector<uint8_t>& config) {
    std::string dir = root_ + "/sys/devices/" + rel;
    mkdirs(dir);
    write(dir + "/vendor", hex(vendor) + "\n");
    write(dir + "/device", hex(device) + "\n");
    std::ofstream(dir + "/config", std::ios::binary)
        .write(reinterpret_cast<const char*>(config.data()), static_cast<std::streamsize>(config.size()));
    ::chmod((dir + "/config").c_str(), 0644);
  }

  // class/net/<name>/device -> ../../../devices/<rel>, as the brief's layout.
  void add_netdev(const std::string& name, const std::string& rel) {
    std::string dir = root_ + "/sys/class/net/" + name;
    mkdirs(dir);
    EXPECT_EQ(::symlink(("../../../devices/" + rel).c_str(), (dir + "/device").c_str()), 0);
  }

  // The real kernel layout: class/net/<name> is itself a link into the
  // device's net/ directory, whose `device` link points back up.
  void add_netdev_kernel_layout(const std::string& name, const std::string& rel) {
    std::string netdir = root_ + "/sys/devices/" + rel + "/net/" + name;
    mkdirs(netdir);
    size_t slash = rel.find_last_of('/');
    std::string fn = slash == std::string::npos ? rel : rel.substr(slash + 1);
    EXPECT_EQ(::symlink(("../../../" + fn).c_str(), (netdir + "/device").c_str()), 0);
    mkdirs(root_ + "/sys/class/net");
    EXPECT_EQ(::symlink(("../../devices/" + rel + "/net/" + name).c_str(), (root_ + "/sys/class/net/" + name).c_str()),
              0);
  }

  // lo, veth, bridges: a class/net entry without a device link.
  void add_virtual_netdev(const std::string& name) {
    std::string dir = root_ + "/sys/devices/virtual/net/" + name;
    mkdirs(dir);
    mkdirs(root_ + "/sys/class/net");
    EXPECT_EQ(::symlink(("../../devices/virtual/net/" + name).c_str(), (root_ + "/sys/class/net/" + name).c_str()), 0);
  }

  std::vector<uint8_t> config(const std::string& rel) const {
    std::ifstream in(root_ + "/sys/devices/" + rel + "/config", std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
  }

  void mkdirs(const std::string& path) {
    std::string cur;
    size_t pos = 0;
    while (pos != std::string::npos) {
      pos = path.find('/', pos + 1);
      cur = path.substr(0, pos);
      ::mkdir(cur.c_str(), 0755);
    }
  }

 private:
  static std::string hex(uint16_t v) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%04x", v);
    return buf;
  }
  static void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

  std::string root_;
};

constexpr char kRootPort[] = "pci0000:17/0000:17:00.0";
constexpr char kNic[] = "pci0000:17/0000:17:00.0/0000:18:00.0";

// Skylake-SP root port A with eth0 below it.
struct SkylakeTree : public FakeSysfs {
  SkylakeTree() {
    add_pci(kRootPort, 0x8086, 0x2030, config_space(kP0On, kP1On));
    add_pci(kNic, 0x15b3, 0x1017, config_space(0, 0));
    add_netdev("eth0", kNic);
  }
};

// Offsets where two config images differ.
std::vector<size_t> diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  std::vector<size_t> out;
  EXPECT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size() && i < b.size(); i++) {
    if (a[i] != b[i]) out.push_back(i);
  }
  return out;
}

// ---- register logic ----

TEST(DdioRegistersTest, OffChangesOnlyTheDocumentedBits) {
  DdioRegisters all{0xffffffff, 0x00000000};
  DdioRegisters off = all.with_ddio(false);
  EXPECT_EQ(off.perfctrlsts_0, 0xffffff77u);  // bits 7 and 3 cleared
  EXPECT_EQ(off.perfctrlsts_1, 0x00000200u);  // bit 9 (TPHDIS) set
  DdioRegisters none{0x00000000, 0xffffffff};
  off = none.with_ddio(false);
  EXPECT_EQ(off.perfctrlsts_0, 0u);
  EXPECT_EQ(off.perfctrlsts_1, 0xffffffffu);
  EXPECT_EQ(off.state(), DdioState::kOff);
}

TEST(DdioRegistersTest, OnChangesOnlyTheDocumentedBits) {
  DdioRegisters none{0x00000000, 0xffffffff};
  DdioRegisters on = none.with_ddio(true);
  EXPECT_EQ(on.perfctrlsts_0, 0x00000080u);  // bit 7 set, NoSnoopOpWrEn untouched
  EXPECT_EQ(on.perfctrlsts_1, 0xfffffdffu);  // bit 9 cleared
  DdioRegisters all{0xffffffff, 0x00000000};
  on = all.with_ddio(true);
  EXPECT_EQ(on.perfctrlsts_0, 0xffffffffu);  // NoSnoopOpWrEn left set as firmware had it
  EXPECT_EQ(on.perfctrlsts_1, 0u);
  EXPECT_EQ(on.state(), DdioState::kOn);
}

TEST(DdioRegistersTest, States) {
  EXPECT_EQ((DdioRegisters{0x00, kTphDis}).state(), DdioState::kOff);
  EXPECT_EQ((DdioRegisters{0x80, 0}).state(), DdioState::kOn);
  EXPECT_EQ((DdioRegisters{0x88, 0}).state(), DdioState::kOn);          // no-snoop writes on their own path
  EXPECT_EQ((DdioRegisters{0x00, 0}).state(), DdioState::kPartial);     // TPH hints may still allocate
  EXPECT_EQ((DdioRegisters{0x08, kTphDis}).state(), DdioState::kPartial);  // no-snoop writes excluded
  EXPECT_EQ((DdioRegisters{0x80, kTphDis}).state(), DdioState::kPartial);
  EXPECT_EQ((DdioRegisters{0x00, 1u << 8}).state(), DdioState::kPartial);  // bit 8 is not TPHDIS
  EXPECT_STREQ(ddio_state_name(DdioState::kPartial), "partial");
}

// ---- against a fake sysfs ----

TEST(DdioTest, StatusReadsRootPort) {
  SkylakeTree t;
  auto s = ddio_status("eth0", t.root());
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(s->netdev, "eth0");
  EXPECT_EQ(s->function, "0000:18:00.0");
  EXPECT_EQ(s->root_port, "0000:17:00.0");
  EXPECT_EQ(s->vendor_id, 0x8086);
  EXPECT_EQ(s->device_id, 0x2030);
  EXPECT_NE(s->platform.find("Cascade Lake"), std::string::npos);
  EXPECT_EQ(s->registers.perfctrlsts_0, kP0On);
  EXPECT_EQ(s->registers.perfctrlsts_1, kP1On);
  EXPECT_TRUE(s->registers.use_allocating_flow_wr());
  EXPECT_TRUE(s->registers.nosnoopopwren());
  EXPECT_FALSE(s->registers.tphdis());
  EXPECT_EQ(s->state(), DdioState::kOn);
}

TEST(DdioTest, OffThenOnTouchExactlyTheDocumentedBytes) {
  SkylakeTree t;
  std::vector<uint8_t> before = t.config(kRootPort);
  ASSERT_EQ(before.size(), 4096u);

  Status st = ddio_set("eth0", false, t.root());
  ASSERT_TRUE(st.ok()) << st.error().message();
  std::vector<uint8_t> off = t.config(kRootPort);
  // 0x180: 0x8a -> 0x02 (bits 7 and 3 cleared); 0x185: 0xa5 -> 0xa7 (bit 1 of
  // the byte = register bit 9 set). Nothing else, not even bit 8 at 0x185.
  EXPECT_EQ(diff(before, off), (std::vector<size_t>{0x180, 0x185}));
  EXPECT_EQ(off[0x180], 0x02);
  EXPECT_EQ(off[0x185], 0xa7);
  auto s = ddio_status("eth0", t.root());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->state(), DdioState::kOff);
  EXPECT_EQ(s->registers.perfctrlsts_0, 0xa5a55a02u);
  EXPECT_EQ(s->registers.perfctrlsts_1, 0x5a5aa7c5u);

  // Idempotent: a second off writes nothing new.
  ASSERT_TRUE(ddio_set("eth0", false, t.root()).ok());
  EXPECT_TRUE(diff(off, t.config(kRootPort)).empty());

  st = ddio_set("eth0", true, t.root());
  ASSERT_TRUE(st.ok()) << st.error().message();
  std::vector<uint8_t> on = t.config(kRootPort);
  // 0x180: 0x02 -> 0x82 (bit 7 back; NoSnoopOpWrEn stays clear); 0x185 back.
  EXPECT_EQ(diff(off, on), (std::vector<size_t>{0x180, 0x185}));
  EXPECT_EQ(on[0x180], 0x82);
  EXPECT_EQ(on[0x185], 0xa5);
  EXPECT_EQ(diff(before, on), (std::vector<size_t>{0x180}));  // only NoSnoopOpWrEn differs from the start
  s = ddio_status("eth0", t.root());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->state(), DdioState::kOn);
  // The NIC's own config space is never touched.
  EXPECT_EQ(t.config(kNic), config_space(0, 0));
}

TEST(DdioTest, PartialStateReported) {
  FakeSysfs t;
  t.add_pci(kRootPort, 0x8086, 0x2031, config_space(0x00000000, 0x00000000));
  t.add_pci(kNic, 0x8086, 0x1592, config_space(0, 0));
  t.add_netdev("ens1f0", kNic);
  auto s = ddio_status("ens1f0", t.root());
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(s->state(), DdioState::kPartial);
}

TEST(DdioTest, KernelLayoutAndPciSwitch) {
  // Behind a PCIe switch: root port 3a:00.0, switch ports 3b:00.0/3c:01.0.
  FakeSysfs t;
  const std::string rp = "pci0000:3a/0000:3a:00.0";
  const std::string nic = rp + "/0000:3b:00.0/0000:3c:01.0/0000:3d:00.1";
  t.add_pci(rp, 0x8086, 0x2032, config_space(kP0On, kP1On));
  t.add_pci(rp + "/0000:3b:00.0", 0x10b5, 0x8747, config_space(0, 0));
  t.add_pci(rp + "/0000:3b:00.0/0000:3c:01.0", 0x10b5, 0x8747, config_space(0, 0));
  t.add_pci(nic, 0x15b3, 0x1017, config_space(0, 0));
  t.add_netdev_kernel_layout("enp61s0f1", nic);
  auto s = ddio_status("enp61s0f1", t.root());
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(s->root_port, "0000:3a:00.0");
  EXPECT_EQ(s->function, "0000:3d:00.1");
  ASSERT_TRUE(ddio_set("enp61s0f1", false, t.root()).ok());
  EXPECT_EQ(diff(config_space(kP0On, kP1On), t.config(rp)), (std::vector<size_t>{0x180, 0x185}));
  EXPECT_EQ(t.config(rp + "/0000:3b:00.0"), config_space(0, 0));  // the switch is not the root port
}

TEST(DdioTest, SupportedFamilies) {
  for (uint16_t id : {0x2f01, 0x2f08, 0x2f0b, 0x6f01, 0x6f02, 0x6f0b, 0x2030, 0x2033}) {
    SCOPED_TRACE(id);
    FakeSysfs t;
    t.add_pci(kRootPort, 0x8086, id, config_space(kP0On, kP1On));
    t.add_pci(kNic, 0x8086, 0x10fb, config_space(0, 0));
    t.add_netdev("eth0", kNic);
    auto s = ddio_status("eth0", t.root());
    ASSERT_TRUE(s.ok()) << s.error().message();
    EXPECT_FALSE(s->platform.empty());
  }
}

TEST(DdioTest, VirtualInterfacesRefused) {
  SkylakeTree t;
  t.add_virtual_netdev("lo");
  t.add_virtual_netdev("veth0");
  for (const char* name : {"lo", "veth0"}) {
    SCOPED_TRACE(name);
    auto s = ddio_status(name, t.root());
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().errnum(), ENODEV);
    EXPECT_NE(s.error().context().find("virtual interface"), std::string::npos) << s.error().message();
    EXPECT_FALSE(ddio_set(name, false, t.root()).ok());
  }
  auto missing = ddio_status("eth9", t.root());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().errnum(), ENODEV);
  EXPECT_NE(missing.error().context().find("no network interface 'eth9'"), std::string::npos);
  auto bad = ddio_status("../eth0", t.root());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().errnum(), EINVAL);
}

TEST(DdioTest, NonPciDevicesRefused) {
  FakeSysfs t;
  t.mkdirs(t.root() + "/sys/devices/platform/soc/wifi0");
  t.add_netdev("wlan0", "platform/soc/wifi0");
  auto s = ddio_status("wlan0", t.root());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errnum(), ENODEV);
  EXPECT_NE(s.error().context().find("is not a PCI device"), std::string::npos) << s.error().message();

  // virtio: the netdev's device is a virtio bus node below a PCI function.
  t.add_pci("pci0000:00/0000:00:03.0", 0x1af4, 0x1000, config_space(0, 0));
  t.mkdirs(t.root() + "/sys/devices/pci0000:00/0000:00:03.0/virtio0");
  t.add_netdev("ens3", "pci0000:00/0000:00:03.0/virtio0");
  s = ddio_status("ens3", t.root());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errnum(), ENODEV);
  EXPECT_NE(s.error().context().find("no PCIe root port"), std::string::npos) << s.error().message();

  // A function directly on the host bridge (root-complex integrated).
  t.add_pci("pci0000:00/0000:00:19.0", 0x8086, 0x15b8, config_space(0, 0));
  t.add_netdev("eno1", "pci0000:00/0000:00:19.0");
  s = ddio_status("eno1", t.root());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().context().find("sits directly on host bridge pci0000:00"), std::string::npos)
      << s.error().message();

  // A dangling device link.
  t.add_netdev("eth7", "pci0000:99/0000:99:00.0/0000:9a:00.0");
  s = ddio_status("eth7", t.root());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errnum(), ENOENT);
}

TEST(DdioTest, NonIntelRootPortRefused) {
  FakeSysfs t;
  t.add_pci(kRootPort, 0x1022, 0x1483, config_space(kP0On, kP1On));
  t.add_pci(kNic, 0x15b3, 0x1017, config_space(0, 0));
  t.add_netdev("eth0", kNic);
  auto s = ddio_status("eth0", t.root());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errnum(), ENOTSUP);
  EXPECT_NE(s.error().context().find("is not an Intel device (vendor 0x1022)"), std::string::npos)
      << s.error().message();
  Status st = ddio_set("eth0", false, t.root());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), ENOTSUP);
  EXPECT_EQ(t.config(kRootPort), config_space(kP0On, kP1On));  // not a byte written
}

TEST(DdioTest, UnknownIntelRootPortRefused) {
  FakeSysfs t;
  t.add_pci(kRootPort, 0x8086, 0x1234, config_space(kP0On, kP1On));
  t.add_pci(kNic, 0x15b3, 0x1017, config_space(0, 0));
  t.add_netdev("eth0", kNic);
  Status st = ddio_set("eth0", false, t.root());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), ENOTSUP);
  EXPECT_NE(st.error().context().find("Intel device 0x1234"), std::string::npos) << st.error().message();
  EXPECT_NE(st.error().context().find("supported root ports"), std::string::npos) << st.error().message();
  EXPECT_NE(st.error().context().find("0x2030-0x2033"), std::string::npos) << st.error().message();
  EXPECT_EQ(t.config(kRootPort), config_space(kP0On, kP1On));

  // Ice Lake-SP: known, but its DDIO is a BIOS-wide switch.
  FakeSysfs icx;
  icx.add_pci(kRootPort, 0x8086, 0x347a, config_space(kP0On, kP1On));
  icx.add_pci(kNic, 0x15b3, 0x1017, config_space(0, 0));
  icx.add_netdev("eth0", kNic);
  auto s = ddio_status("eth0", icx.root());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().context().find("Ice Lake"), std::string::npos) << s.error().message();
  EXPECT_NE(s.error().context().find("BIOS"), std::string::npos) << s.error().message();
}

TEST(DdioTest, VerificationFailureIsAnError) {
  // A config "file" that swallows writes and reads back zeros: the write
  // succeeds but does not stick, as with a firmware-locked register.
  FakeSysfs t;
  t.add_pci(kRootPort, 0x8086, 0x2030, config_space(0, 0));
  std::string config = t.root() + "/sys/devices/" + kRootPort + "/config";
  ASSERT_EQ(::unlink(config.c_str()), 0);
  ASSERT_EQ(::symlink("/dev/zero", config.c_str()), 0);
  t.add_pci(kNic, 0x15b3, 0x1017, config_space(0, 0));
  t.add_netdev("eth0", kNic);
  Status st = ddio_set("eth0", false, t.root());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EIO);
  EXPECT_NE(st.error().context().find("did not stick"), std::string::npos) << st.error().message();
}

TEST(DdioTest, ShortConfigSpace) {
  // Only the 256-byte legacy config space: the registers at 0x180 are out of reach.
  FakeSysfs t;
  t.add_pci(kRootPort, 0x8086, 0x2030, config_space(0, 0, 256));
  t.add_pci(kNic, 0x15b3, 0x1017, config_space(0, 0));
  t.add_netdev("eth0", kNic);
  auto s = ddio_status("eth0", t.root());
  ASSERT_FALSE(s.ok());
  if (::geteuid() == 0) {
    EXPECT_EQ(s.error().errnum(), EIO);
    EXPECT_NE(s.error().context().find("extended (PCIe) config space"), std::string::npos) << s.error().message();
  } else {
    EXPECT_EQ(s.error().errnum(), EACCES);
  }
}

// As root, the check runs as user nobody in a death-test child; as a normal
// user it runs in place against a read-only config file.
TEST(DdioTest, WritingWithoutPrivilegeIsReportedClearly) {
  SkylakeTree t;
  auto check = [&t]() {
    Status st = ddio_set("eth0", false, t.root());
    if (st.ok()) return 1;
    if (st.error().errnum() != EACCES) return 2;
    if (st.error().context().find("needs root") == std::string::npos) return 3;
    return 0;
  };
  if (::geteuid() != 0) {
    ::chmod((t.root() + "/sys/devices/" + kRootPort + "/config").c_str(), 0444);
    EXPECT_EQ(check(), 0);
    return;
  }
  EXPECT_EXIT(
      {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) std::_Exit(10);
        std::_Exit(check());
      },
      testing::ExitedWithCode(0), "");
  EXPECT_EQ(t.config(kRootPort), config_space(kP0On, kP1On));
}

// Real sysfs gives readers without CAP_SYS_ADMIN only the first 64 bytes of
// config space; a 64-byte file read by an unprivileged user looks the same.
TEST(DdioTest, UnprivilegedShortReadExplainsCapability) {
  FakeSysfs t;
  t.add_pci(kRootPort, 0x8086, 0x2030, config_space(0, 0, 64));
  t.add_pci(kNic, 0x15b3, 0x1017, config_space(0, 0));
  t.add_netdev("eth0", kNic);
  auto check = [&t]() {
    auto s = ddio_status("eth0", t.root());
    if (s.ok()) return 1;
    if (s.error().errnum() != EACCES) return 2;
    if (s.error().context().find("CAP_SYS_ADMIN") == std::string::npos) return 3;
    return 0;
  };
  if (::geteuid() != 0) {
    EXPECT_EQ(check(), 0);
    return;
  }
  EXPECT_EXIT(
      {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) std::_Exit(10);
        std::_Exit(check());
      },
      testing::ExitedWithCode(0), "");
}

TEST(DdioTest, ApplyFollowsNicConfig) {
  SkylakeTree t;
  ASSERT_EQ(::setenv("PBRICK_SYSFS_ROOT", t.root().c_str(), 1), 0);
  NicConfig nic;
  nic.netdev = "eth0";
  nic.ddio = DdioMode::kUnmanaged;
  EXPECT_TRUE(ddio_apply(nic).ok());
  EXPECT_EQ(t.config(kRootPort), config_space(kP0On, kP1On));
  nic.ddio = DdioMode::kOff;
  ASSERT_TRUE(ddio_apply(nic).ok());
  EXPECT_EQ(ddio_status("eth0")->state(), DdioState::kOff);
  nic.ddio = DdioMode::kOn;
  ASSERT_TRUE(ddio_apply(nic).ok());
  EXPECT_EQ(ddio_status("eth0")->state(), DdioState::kOn);
  nic.netdev.clear();
  EXPECT_FALSE(ddio_apply(nic).ok());
  ::unsetenv("PBRICK_SYSFS_ROOT");
}

// A brick serving sync-read holds its root port's DDIO off: holding needs
// DDIO off there; while held, DDIO on is refused (another brick's `ddio: on`
// on the same root port, pbrickctl ddio on), and the register is untouched;
// once every holder is gone it goes through.
TEST(DdioTest, DdioOnIsRefusedWhileABrickHoldsItOff) {
  SkylakeTree t;
  auto refused = ddio_hold_off("eth0", t.root());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().errnum(), EIO);
  EXPECT_NE(refused.error().message().find("DDIO is on on root port 0000:17:00.0 above eth0, not off"),
            std::string::npos)
      << refused.error().message();

  ASSERT_TRUE(ddio_set("eth0", false, t.root()).ok());
  auto first = ddio_hold_off("eth0", t.root());
  ASSERT_TRUE(first.ok()) << first.error().message();
  auto second = ddio_hold_off("eth0", t.root());  // two bricks on one root port
  ASSERT_TRUE(second.ok()) << second.error().message();
  const std::vector<uint8_t> held = t.config(kRootPort);

  Status on = ddio_set("eth0", true, t.root());
  ASSERT_FALSE(on.ok());
  EXPECT_EQ(on.error().errnum(), EBUSY);
  EXPECT_NE(on.error().message().find("a running brick serves sync-read relying on DDIO off there"),
            std::string::npos)
      << on.error().message();
  EXPECT_EQ(t.config(kRootPort), held) << "the register was written under a holder";
  EXPECT_TRUE(ddio_set("eth0", false, t.root()).ok()) << "off is never refused";

  first->reset();
  Status still = ddio_set("eth0", true, t.root());
  ASSERT_FALSE(still.ok()) << "the second holder still runs";
  EXPECT_EQ(still.error().errnum(), EBUSY);
  second->reset();
  ASSERT_TRUE(ddio_set("eth0", true, t.root()).ok());
  EXPECT_EQ(ddio_status("eth0", t.root())->state(), DdioState::kOn);
}

// ---- the CLI ----

int run_ddio(std::vector<std::string> args, std::string* out, std::string* err) {
  args.insert(args.begin(), "ddio");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  int rc = ddio_main(static_cast<int>(argv.size()), argv.data());
  *out = testing::internal::GetCapturedStdout();
  *err = testing::internal::GetCapturedStderr();
  return rc;
}

class DdioMainTest : public testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(::setenv("PBRICK_SYSFS_ROOT", tree_.root().c_str(), 1), 0); }
  void TearDown() override { ::unsetenv("PBRICK_SYSFS_ROOT"); }
  SkylakeTree tree_;
  std::string out_, err_;
};

TEST_F(DdioMainTest, StatusTable) {
  EXPECT_EQ(run_ddio({"status", "--netdev", "eth0"}, &out_, &err_), 0) << err_;
  EXPECT_NE(out_.find("NETDEV"), std::string::npos) << out_;
  EXPECT_NE(out_.find("eth0"), std::string::npos) << out_;
  EXPECT_NE(out_.find("0000:17:00.0"), std::string::npos) << out_;
  EXPECT_NE(out_.find("0x2030"), std::string::npos) << out_;
  EXPECT_NE(out_.find(" on "), std::string::npos) << out_;
  EXPECT_NE(out_.find("0xa5a55a8a"), std::string::npos) << out_;
  EXPECT_NE(out_.find("0x5a5aa5c5"), std::string::npos) << out_;
}

TEST_F(DdioMainTest, OffAndOnWithJson) {
  EXPECT_EQ(run_ddio({"off", "--netdev=eth0", "--json"}, &out_, &err_), 0) << err_;
  EXPECT_EQ(out_,
            "{\"ports\":[{\"netdev\":\"eth0\",\"function\":\"0000:18:00.0\",\"root_port\":\"0000:17:00.0\","
            "\"vendor\":\"0x8086\",\"device\":\"0x2030\",\"platform\":\"Skylake-SP/Cascade Lake-SP (Xeon Scalable "
            "1st/2nd gen)\",\"state\":\"off\",\"perfctrlsts_0\":\"0xa5a55a02\",\"perfctrlsts_1\":\"0x5a5aa7c5\","
            "\"use_allocating_flow_wr\":false,\"nosnoopopwren\":false,\"tphdis\":true}]}\n");
  EXPECT_EQ(run_ddio({"status", "--json", "--netdev", "eth0"}, &out_, &err_), 0);
  EXPECT_NE(out_.find("\"state\":\"off\""), std::string::npos) << out_;
  EXPECT_EQ(run_ddio({"on", "--netdev", "eth0"}, &out_, &err_), 0) << err_;
  EXPECT_NE(out_.find(" on "), std::string::npos) << out_;
}

TEST_F(DdioMainTest, ErrorsAndUsage) {
  tree_.add_virtual_netdev("veth0");
  EXPECT_EQ(run_ddio({"off", "--netdev", "veth0"}, &out_, &err_), 1);
  EXPECT_NE(err_.find("virtual interface"), std::string::npos) << err_;
  EXPECT_EQ(tree_.config(kRootPort), config_space(kP0On, kP1On));
  // One bad interface does not hide the good one.
  EXPECT_EQ(run_ddio({"status", "--netdev", "veth0", "--netdev", "eth0"}, &out_, &err_), 1);
  EXPECT_NE(out_.find("eth0"), std::string::npos) << out_;
  EXPECT_EQ(run_ddio({}, &out_, &err_), 2);
  EXPECT_NE(err_.find("usage:"), std::string::npos);
  EXPECT_EQ(run_ddio({"status"}, &out_, &err_), 2);
  EXPECT_NE(err_.find("--netdev NAME is required"), std::string::npos);
  EXPECT_EQ(run_ddio({"toggle", "--netdev", "eth0"}, &out_, &err_), 2);
  EXPECT_EQ(run_ddio({"status", "--netdev"}, &out_, &err_), 2);
  EXPECT_EQ(run_ddio({"status", "--bogus", "--netdev", "eth0"}, &out_, &err_), 2);
  EXPECT_EQ(run_ddio({"status", "extra", "--netdev", "eth0"}, &out_, &err_), 2);
  EXPECT_EQ(run_ddio({"--help"}, &out_, &err_), 0);
  EXPECT_NE(out_.find("usage:"), std::string::npos);
}

}  // namespace
}  // namespace pbrick
