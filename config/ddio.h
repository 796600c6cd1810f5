// Per-root-port control of Intel DDIO ("allocating flow" DMA writes into the
// last-level cache) for the PCIe root port above a network interface.
//
// Why: a brick with `persistence: sync-read` relies on RDMA writes reaching
// the memory controller (the persistence domain) before a following RDMA read
// completes. With DDIO on, inbound writes are allocated in the L3 cache, which
// is not persistent, so the storage NIC's root port must have DDIO off. The
// register facts, the TPHDIS bit decision and its sources: docs/ddio.md.
//
// The netdev is resolved through <sysfs root>/sys/class/net/NAME/device to
// its PCI function, the path is walked up to the device directly under the
// host bridge (the root port), and the root port's config space file is read
// and written with pread/pwrite. The sysfs root is "" (the real /sys) unless
// PBRICK_SYSFS_ROOT is set, which tests use to point at a fake tree.
//
// Only Intel root ports whose register layout is documented are touched:
// anything else is refused with ENOTSUP before a byte is written.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "config/cluster_config.h"

namespace pbrick {

// Config-space offsets and bits of the Intel IIO root port "perfctrlsts"
// register pair (one 64-bit register, accessed as two little-endian dwords).
inline constexpr uint32_t kPerfCtrlSts0Offset = 0x180;
inline constexpr uint32_t kPerfCtrlSts1Offset = 0x184;
inline constexpr uint32_t kNoSnoopOpWrEn = 1u << 3;        // perfctrlsts_0[3]
inline constexpr uint32_t kUseAllocatingFlowWr = 1u << 7;  // perfctrlsts_0[7]
inline constexpr uint32_t kTphDis = 1u << 9;               // perfctrlsts_1[9] (bit 41 of the qword)

enum class DdioState {
  kOff,      // allocating flow off, NoSnoopOpWrEn off, TPHDIS on
  kOn,       // allocating flow on, TPHDIS off
  kPartial,  // anything else: neither guarantee holds
};
const char* ddio_state_name(DdioState state);

// The two register values and the state they mean.
struct DdioRegisters {
  uint32_t perfctrlsts_0 = 0;
  uint32_t perfctrlsts_1 = 0;

  bool use_allocating_flow_wr() const { return perfctrlsts_0 & kUseAllocatingFlowWr; }
  bool nosnoopopwren() const { return perfctrlsts_0 & kNoSnoopOpWrEn; }
  bool tphdis() const { return perfctrlsts_1 & kTphDis; }
  DdioState state() const;
  // The values `ddio off` / `ddio on` write: only the documented bits change.
  DdioRegisters with_ddio(bool enabled) const;
};

struct DdioPortState {
  std::string netdev;          // "eth0"
  std::string function;        // the NIC's PCI function, "0000:18:00.0"
  std::string root_port;       // "0000:17:00.0"
  std::string root_port_path;  // sysfs directory of the root port
  uint16_t vendor_id = 0;
  uint16_t device_id = 0;
  std::string platform;  // "Skylake-SP/Cascade Lake-SP"
  DdioRegisters registers;

  DdioState state() const { return registers.state(); }
};

// PBRICK_SYSFS_ROOT, or "" for the real sysfs.
std::string ddio_sysfs_root();

// Reads the root port's registers. Reading beyond the first 64 bytes of
// config space needs CAP_SYS_ADMIN on real sysfs; that is reported as EACCES.
Result<DdioPortState> ddio_status(const std::string& netdev);
Result<DdioPortState> ddio_status(const std::string& netdev, const std::string& sysfs_root);

// Turns DDIO off (enabled=false) or on for the root port above `netdev`:
// read-modify-write of the two 32-bit registers touching only the documented
// bits, then a read back that must match (EIO otherwise). Idempotent: a
// register already holding the target value is not written.
Status ddio_set(const std::string& netdev, bool enabled);
Status ddio_set(const std::string& netdev, bool enabled, const std::string& sysfs_root);

// Applies a brick's nic.ddio setting: off/on call ddio_set on nic.netdev,
// unmanaged does nothing. For ExecStartPre-style use.
Status ddio_apply(const NicConfig& nic);

// DDIO is one setting per root port, and a brick serving sync-read relies on
// it staying off while it runs. ddio_hold_off takes a shared lock for the
// root port above `netdev` (a file in /run/pbrick, or under the sysfs root
// when set) and then requires DDIO off there (EIO naming the state
// otherwise); held as long as the returned descriptor is open. ddio_set on
// (enabled) takes the lock exclusively for its write and refuses (EBUSY) while
// a holder runs: another brick's `ddio: on`, or `pbrickctl ddio on`, cannot
// turn DDIO back on under a running sync-read brick.
Result<UniqueFd> ddio_hold_off(const std::string& netdev);
Result<UniqueFd> ddio_hold_off(const std::string& netdev, const std::string& sysfs_root);

// `pbrickctl ddio status|off|on --netdev NAME [--netdev NAME...] [--json]`;
// argv[0] is "ddio". Returns 0 on success, 1 on failure, 2 on usage errors.
int ddio_main(int argc, char** argv);

}  // namespace pbrick
