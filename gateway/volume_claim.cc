#include "gateway/volume_claim.h"

#include <algorithm>

#include <errno.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <thread>
#include <vector>

#include "common/auth.h"
#include "common/log.h"
#include "common/units.h"

namespace pbrick {

namespace {

// How long an exclusive MAP that meets EBUSY is retried: a holder that was
// just killed is dropped once the brick has processed its connection's close.
constexpr auto kLockRetryFor = std::chrono::milliseconds(1500);
// How much longer when the holder record names a process of this host that
// has exited (holder_exited_here).
constexpr auto kExitedHolderWait = std::chrono::seconds(20);

std::string where(const ClaimBrick& b, size_t index) {
  return "brick " + std::to_string(index) + " (" + b.endpoint + ")";
}

uint64_t unix_now() { return static_cast<uint64_t>(std::time(nullptr)); }

// At most `n` bytes of `s`, anything but printable ASCII as '?'.
std::string clip_printable(std::string s, size_t n) {
  if (s.size() > n) s.resize(n);
  for (char& ch : s) {
    if (ch < 0x20 || ch >= 0x7f) ch = '?';
  }
  return s;
}

// Maps the label block shared (read-only or read-write), runs fn(handle), unmaps.
template <typename Fn>
Status with_label_block(BrickClient& c, uint64_t vaddr, bool write, Fn&& fn) {
  auto m = c.map(vaddr, proto::kMapShared | (write ? proto::kMapWrite : 0));
  if (!m) return m.error();
  Status st = fn(*m);
  Status un = c.unmap(vaddr);
  if (!st) return st;
  return un;
}

// The label block's bytes (both slots and the holder record), or an empty
// vector when the block is not allocated (no label).
Result<std::vector<uint8_t>> read_label_block(BrickClient& c, uint64_t vaddr) {
  std::vector<uint8_t> bytes(kLabelReadSize);
  Status st = with_label_block(c, vaddr, false, [&](const proto::MapReply& m) {
    return c.read(m.rkey, m.remote_addr, bytes);
  });
  if (!st) {
    if (st.error().errnum() == ENOENT) return std::vector<uint8_t>{};
    return st.error();
  }
  return bytes;
}

// Writes `data` at `offset` of the label block (allocating it on first use)
// and returns once the brick has made it durable: PERSIST where granted, else
// a READ on the same connection (sync-read, docs/persistence.md), which also
// proves the bytes arrived.
Status write_label_block(BrickClient& c, uint64_t vaddr, uint64_t offset, std::span<const uint8_t> data) {
  Status st = c.alloc(vaddr);
  if (!st && st.error().errnum() != EEXIST) return st;
  return with_label_block(c, vaddr, true, [&](const proto::MapReply& m) -> Status {
    PBRICK_TRY(c.write(m.rkey, m.remote_addr + offset, data));
    const uint64_t features = c.hello().features;
    if (features & proto::kFeaturePersistRpc) {
      proto::PersistRange r{m.rkey, m.remote_addr + offset, data.size()};
      return c.persist({&r, 1});
    }
    if (features & proto::kFeatureSyncRead) {
      std::vector<uint8_t> back(data.size());
      PBRICK_TRY(c.read(m.rkey, m.remote_addr + offset, back));
      if (!std::equal(back.begin(), back.end(), data.begin())) {
        return Error(EIO, "label write at " + format_hex(vaddr) + " did not read back");
      }
      return Status::Ok();
    }
    return Error(EOPNOTSUPP, "the brick granted neither PERSIST nor sync-read: a label cannot be made durable");
  });
}

// The slot a new label goes to: the one not holding the brick's newest valid
// label, so a torn write leaves that one readable even when generations were
// skipped on this brick (a stale brick, a failed attempt: parity alone would
// overwrite it); by the generation's parity when neither slot holds one.
Result<uint64_t> label_slot_for(BrickClient& c, uint64_t vaddr, uint64_t generation) {
  auto bytes = read_label_block(c, vaddr);
  if (!bytes) return bytes.error().wrap("read label before writing it");
  if (bytes->empty()) return generation % 2;
  std::optional<uint64_t> newest_slot;
  uint64_t newest = 0;
  for (uint64_t slot = 0; slot < 2; slot++) {
    auto l = decode_label(std::span<const uint8_t>(*bytes).subspan(slot * kLabelSlotSize, kLabelSlotSize));
    if (l && (!newest_slot || l->generation > newest)) {
      newest_slot = slot;
      newest = l->generation;
    }
  }
  return newest_slot ? 1 - *newest_slot : generation % 2;
}

Status write_label(BrickClient& c, uint64_t vaddr, const VolumeLabel& l) {
  auto slot = label_slot_for(c, vaddr, l.generation);
  if (!slot) return slot.error();
  auto bytes = encode_label(l);
  return write_label_block(c, vaddr, *slot * kLabelSlotSize, bytes);
}

// This host's name as holder records keep it: clipped, printable ASCII.
std::string recorded_hostname() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) return {};
  return clip_printable(host, 63);
}

HolderRecord this_holder(const Uuid& volume, const Uuid& attachment) {
  HolderRecord h;
  h.volume_uuid = volume;
  h.attachment = attachment;
  h.pid = static_cast<uint64_t>(getpid());
  h.since = unix_now();
  h.host = recorded_hostname();
  h.program = clip_printable(program_invocation_short_name, 31);
  return h;
}

// Whether the holder record names a process of this host that has exited
// (gone, or a zombie: its connections are closed or closing). A pid taken by
// another process since reads as alive: the short wait, then EBUSY.
bool holder_exited_here(const HolderRecord& h) {
  const std::string host = recorded_hostname();
  if (host.empty() || h.host != host) return false;
  if (h.pid == 0 || h.pid > static_cast<uint64_t>(INT32_MAX)) return false;
  const pid_t pid = static_cast<pid_t>(h.pid);
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  char state = 0;
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (f == nullptr) return false;
  // "pid (comm) S ...": the command may hold spaces and parentheses; the
  // state follows the last ')'.
  char buf[512] = {};
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const char* close = std::strrchr(buf, ')');
  if (close != nullptr && close + 2 < buf + n) state = close[2];
  return state == 'Z' || state == 'X';
}

// The holder record beside label block `label`, if it reads and decodes.
std::optional<HolderRecord> read_holder(BrickClient& c, uint64_t label) {
  auto bytes = read_label_block(c, label);
  if (!bytes || bytes->size() != kLabelReadSize) return std::nullopt;
  auto h = decode_holder(std::span<const uint8_t>(*bytes).subspan(kHolderOffset, kLabelSlotSize));
  if (!h) return std::nullopt;
  return *h;
}

// Maps the lock block exclusively; the mapping lives as long as the connection.
// `held_by_us` (optional) is set when the holder record names `attachment`.
// `wait_for_exited`: a holder of this host that has exited is waited for
// (an attach or recover); a reconnect, which must not take back a volume
// another attachment held meanwhile, does not wait.
Status take_lock(const ClaimBrick& b, size_t index, uint64_t label, const Uuid& attachment, bool wait_for_exited,
                 bool* held_by_us = nullptr) {
  BrickClient& c = *b.control;
  const uint64_t lock = lock_vaddr_of(label);
  Status st = c.alloc(lock);
  if (!st && st.error().errnum() != EEXIST) return st.error().wrap(where(b, index) + ": lock");
  auto deadline = std::chrono::steady_clock::now() + kLockRetryFor;
  bool waited_for_exited = false;
  for (;;) {
    auto m = c.map(lock, 0);  // read-only, exclusive
    if (m) return Status::Ok();
    if (m.error().errnum() != EBUSY) return m.error().wrap(where(b, index) + ": lock");
    if (std::chrono::steady_clock::now() >= deadline) {
      // A holder of this host that has exited (a gateway killed a moment
      // ago, recovered now) holds the lock only until the brick has seen
      // its connections close: over RDMA, once the connection manager's
      // disconnect reached it, which a loaded host delays. Worth a longer
      // wait; any other holder is refused now.
      if (waited_for_exited || !wait_for_exited) break;
      auto h = read_holder(c, label);
      if (!h || !holder_exited_here(*h)) break;
      PBRICK_LOG_NOTICE("%s: the volume is held by %s, which has exited: waiting up to %lld s for the brick to "
                        "drop its connections",
                        where(b, index).c_str(), h->to_string().c_str(),
                        static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kExitedHolderWait)
                                                   .count()));
      waited_for_exited = true;
      deadline = std::chrono::steady_clock::now() + kExitedHolderWait;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::string holder = "an attachment that has not recorded itself yet";
  if (auto h = read_holder(c, label)) {
    holder = h->to_string();
    if (held_by_us != nullptr) *held_by_us = h->attachment == attachment && attachment != Uuid{};
    if (waited_for_exited && holder_exited_here(*h)) holder += ", which has exited, but the brick still holds its connection";
  }
  return Error(EBUSY, "volume at " + format_hex(b.base) + " on " + where(b, index) + " is held by " + holder);
}

Result<std::vector<BrickSeen>> read_all(std::span<const ClaimBrick> bricks) {
  std::vector<BrickSeen> seen;
  for (size_t i = 0; i < bricks.size(); i++) {
    const ClaimBrick& b = bricks[i];
    auto vaddr = label_vaddr(b.base);
    if (!vaddr) return vaddr.error().wrap(where(b, i));
    BrickSeen s;
    s.endpoint = b.endpoint;
    s.base = b.base;
    if (b.control == nullptr) {  // a mirror's brick missing at a --degraded attach
      s.absent = true;
      seen.push_back(std::move(s));
      continue;
    }
    s.store = b.control->hello().brick_uuid;
    s.base = b.base;
    auto bytes = read_label_block(*b.control, *vaddr);
    if (!bytes) return bytes.error().wrap(where(b, i) + ": read label");
    if (!bytes->empty()) {
      auto r = read_label_slots(*bytes);
      if (!r) return r.error().wrap(where(b, i));
      s.read = std::move(*r);
      auto record = std::span<const uint8_t>(*bytes).subspan(kHolderOffset, kLabelSlotSize);
      if (std::any_of(record.begin(), record.end(), [](uint8_t x) { return x != 0; })) {
        auto h = decode_holder(record);
        if (h) {
          s.holder = std::move(*h);
        } else {
          s.holder_damaged = true;
        }
      }
    }
    seen.push_back(std::move(s));
  }
  return seen;
}

Result<LabelPlan> check_all(std::span<const ClaimBrick> bricks, const LabelRequest& request, const Uuid& fresh) {
  auto seen = read_all(bricks);
  if (!seen) return seen.error();
  return plan_labels(*seen, request, unix_now(), fresh);
}

}  // namespace

Result<VolumeClaim> VolumeClaim::Acquire(std::span<const ClaimBrick> bricks, const LabelRequest& request) {
  // Data blocks must stay below the label areas (volume_label.h).
  const uint64_t blocks = (request.size + proto::kBlockSize - 1) / proto::kBlockSize;
  for (size_t i = 0; i < bricks.size(); i++) {
    uint64_t per_brick = Placement{static_cast<uint32_t>(bricks.size()),
                                   request.layout == Layout::kMirror ? request.copies : 1}
                             .slots_per_brick(blocks);
    if (bricks[i].base > kMaxLabelledBase || per_brick > (kLabelAreaStart - bricks[i].base) / proto::kBlockSize) {
      return Error(EINVAL, where(bricks[i], i) + ": volume of " + format_size(request.size) + " at " +
                               format_hex(bricks[i].base) + " reaches " + format_hex(kLabelAreaStart) +
                               ", where label areas live");
    }
  }
  Uuid fresh{};
  PBRICK_TRY(random_bytes(fresh.data(), fresh.size()));
  fresh[6] = static_cast<uint8_t>((fresh[6] & 0x0f) | 0x40);  // RFC 4122 version 4
  fresh[8] = static_cast<uint8_t>((fresh[8] & 0x3f) | 0x80);
  Uuid attachment{};
  PBRICK_TRY(random_bytes(attachment.data(), attachment.size()));
  // Check first, touching nothing, so a refused attach changes no brick.
  auto plan = check_all(bricks, request, fresh);
  if (!plan) return plan.error();
  if (request.read_only) return VolumeClaim(plan->target, true);

  size_t locked = 0;
  auto release = [&] {
    for (size_t i = 0; i < locked; i++) {
      if (bricks[i].control == nullptr) continue;
      (void)bricks[i].control->unmap(lock_vaddr_of(*label_vaddr(bricks[i].base)));
    }
  };
  for (; locked < bricks.size(); locked++) {
    if (bricks[locked].control == nullptr) continue;
    Status st = take_lock(bricks[locked], locked, *label_vaddr(bricks[locked].base), attachment,
                          /*wait_for_exited=*/true);
    if (!st) {
      release();
      return st.error();
    }
  }
  // Under the lock: nobody else writes the labels now; read them again (an
  // attach that held the volume a moment ago may have changed them).
  auto seen = read_all(bricks);
  if (seen) plan = plan_labels(*seen, request, unix_now(), fresh);
  if (!seen || !plan) {
    release();
    return seen ? plan.error() : seen.error();
  }
  // A mirror's last writer that did not detach cleanly (its record on a
  // brick holding in-sync copies never said closed) may have left copies
  // that differ (mirror.h). A damaged record counts as such.
  bool unclean = false;
  if (request.layout == Layout::kMirror && plan->action != LabelPlan::Action::kCreate) {
    for (size_t i = 0; i < seen->size(); i++) {
      const BrickSeen& s = (*seen)[i];
      if (s.absent || plan->target.bricks[i].stale_since != 0) continue;
      if (s.holder_damaged || (s.holder && s.holder->volume_uuid == plan->target.volume_uuid && s.holder->closed == 0)) {
        unclean = true;
      }
    }
  }
  auto fail = [&](size_t i, const Error& e) -> Error {
    release();
    return e.wrap(where(bricks[i], i) + ": write label");
  };
  HolderRecord holder = this_holder(plan->target.volume_uuid, attachment);
  auto holder_bytes = encode_holder(holder);
  std::vector<uint8_t> recorded(bricks.size(), 0);
  for (size_t i = 0; i < bricks.size(); i++) {
    if (bricks[i].control == nullptr) continue;
    Status st = write_label_block(*bricks[i].control, *label_vaddr(bricks[i].base), kHolderOffset, holder_bytes);
    if (!st) return fail(i, st.error());
    recorded[i] = 1;
  }
  VolumeLabel l = plan->target;
  if (plan->action == LabelPlan::Action::kCreate) {
    // Phase 1: every brick durably holds the uncommitted label before any
    // brick commits: a set without a committed label is no volume.
    VolumeLabel prepared = l;
    prepared.flags = 0;
    prepared.generation = l.generation - 1;
    for (size_t i = 0; i < bricks.size(); i++) {
      prepared.index = static_cast<uint32_t>(i);
      Status st = write_label(*bricks[i].control, *label_vaddr(bricks[i].base), prepared);
      if (!st) return fail(i, st.error());
    }
    PBRICK_LOG_INFO("volume %s: labelled %zu brick(s), %s", format_uuid(l.volume_uuid).c_str(), bricks.size(),
                    format_size(l.size).c_str());
  }
  if (plan->action != LabelPlan::Action::kNone) {
    // Phase 2 (or an update): commit, brick by brick. An interruption leaves
    // committed labels of two generations with one identity, which the next
    // read-write attach finishes (plan_labels).
    for (size_t i = 0; i < bricks.size(); i++) {
      if (bricks[i].control == nullptr) continue;
      l.index = static_cast<uint32_t>(i);
      Status st = write_label(*bricks[i].control, *label_vaddr(bricks[i].base), l);
      if (!st) return fail(i, st.error());
    }
  }
  l.index = 0;
  VolumeClaim claim(std::move(l), false, attachment, std::move(recorded));
  claim.holder_ = holder;
  claim.left_uncleanly_ = unclean;
  return claim;
}

VolumeLabel VolumeClaim::current() const {
  std::lock_guard lock(*mu_);
  return label_;
}

Status VolumeClaim::write_label_to(const ClaimBrick& b, size_t index, const VolumeLabel& label) {
  VolumeLabel l = label;
  l.index = static_cast<uint32_t>(index);
  return write_label(*b.control, *label_vaddr(b.base), l);
}

void VolumeClaim::commit(const VolumeLabel& label) {
  std::lock_guard lock(*mu_);
  label_ = label;
  label_.index = 0;
}

uint64_t VolumeClaim::next_generation() const {
  std::lock_guard lock(*mu_);
  return std::max(label_.generation, proposed_) + 1;
}

void VolumeClaim::propose(const VolumeLabel& label) {
  std::lock_guard lock(*mu_);
  proposed_ = std::max(proposed_, label.generation);
}

Status VolumeClaim::record_closed(size_t index, const ClaimBrick& b) const {
  {
    std::lock_guard lock(*mu_);
    if (read_only_ || index >= recorded_.size() || !recorded_[index]) return Status::Ok();
  }
  // Only over this attachment's own record: one that took the volume over
  // meanwhile (its record there now) may be writing still.
  const std::string what = where(b, index) + ": record the clean detach";
  auto bytes = read_label_block(*b.control, *label_vaddr(b.base));
  if (!bytes) return bytes.error().wrap(what);
  if (bytes->size() != kLabelReadSize) return Error(ENOENT, what + ": the label block is gone");
  auto now = decode_holder(std::span<const uint8_t>(*bytes).subspan(kHolderOffset, kLabelSlotSize));
  if (!now) return now.error().wrap(what);
  if (now->attachment != attachment_) return Error(EBUSY, what + ": the volume is held by " + now->to_string());
  HolderRecord h = holder_;
  h.closed = std::max<uint64_t>(unix_now(), 1);
  return write_label_block(*b.control, *label_vaddr(b.base), kHolderOffset, encode_holder(h)).wrap_error(what);
}

Status VolumeClaim::record_dirty(const ClaimBrick& b, uint64_t index, uint8_t byte) {
  return write_label_block(*b.control, *label_vaddr(b.base), kDirtyOffset + index, {&byte, 1});
}

Status VolumeClaim::write_dirty(const ClaimBrick& b, std::span<const uint8_t> bits) {
  if (bits.empty()) return Status::Ok();
  return write_label_block(*b.control, *label_vaddr(b.base), kDirtyOffset, bits);
}

Result<std::optional<VolumeLabel>> VolumeClaim::read_label(const ClaimBrick& b) {
  auto vaddr = label_vaddr(b.base);
  if (!vaddr) return vaddr.error();
  auto bytes = read_label_block(*b.control, *vaddr);
  if (!bytes) return bytes.error().wrap(b.endpoint + ": read label");
  if (bytes->empty()) return std::optional<VolumeLabel>();
  auto r = read_label_slots(*bytes);
  if (!r) return r.error().wrap(b.endpoint);
  return r->label;
}

Status VolumeClaim::check_unlabelled(const ClaimBrick& b) {
  auto vaddr = label_vaddr(b.base);
  if (!vaddr) return vaddr.error();
  auto bytes = read_label_block(*b.control, *vaddr);
  if (!bytes) return bytes.error().wrap(b.endpoint + ": read label");
  if (bytes->empty()) return Status::Ok();
  auto r = read_label_slots(*bytes);
  if (r && !r->label) return Status::Ok();
  return Error(EEXIST, b.endpoint + " holds a volume label at base " + format_hex(b.base) +
                           (r ? " (" + volume_desc(*r->label) + ")" : "") + ": not an empty brick");
}

Result<std::vector<uint8_t>> VolumeClaim::read_dirty(const ClaimBrick& b, size_t bytes) {
  std::vector<uint8_t> out(bytes);
  if (bytes == 0) return out;
  Status st = with_label_block(*b.control, *label_vaddr(b.base), false, [&](const proto::MapReply& m) {
    return b.control->read(m.rkey, m.remote_addr + kDirtyOffset, out);
  });
  if (!st) return st.error();
  return out;
}

Status VolumeClaim::reacquire(size_t index, const ClaimBrick& b, bool stale) const {
  auto vaddr = label_vaddr(b.base);
  if (!vaddr) return vaddr.error();
  const VolumeLabel label = current();
  uint64_t proposed = 0;
  {
    std::lock_guard lock(*mu_);
    proposed = proposed_;
  }
  const std::string vol = "volume " + format_uuid(label.volume_uuid);
  auto check = [&]() -> Status {
    auto bytes = read_label_block(*b.control, *vaddr);
    if (!bytes) return bytes.error().wrap(where(b, index) + ": read label");
    auto r = bytes->empty() ? Result<LabelRead>(LabelRead{}) : read_label_slots(*bytes);
    if (!r) return r.error().wrap(where(b, index));
    if (!r->label) {
      // A stale brick without a label: a replacement not resynced yet.
      if (stale) return Status::Ok();
      return Error(kErrWrongStore, where(b, index) + " no longer holds the label of " + vol);
    }
    // A label this attachment wrote and has not committed (propose()): the
    // connection died after the write landed; the writer writes it again.
    if (r->label->same_identity(label) && r->label->index == index && r->label->generation > label.generation &&
        r->label->generation <= proposed) {
      return Status::Ok();
    }
    if (stale && r->label->same_identity(label) && r->label->index == index &&
        r->label->generation < label.generation) {
      for (size_t k = 0; k < label.bricks.size(); k++) {
        if (label.bricks[k].stale_since == 0 && r->label->bricks[k].stale_since != 0) {
          return Error(kErrWrongStore, where(b, index) + " was written without brick " + std::to_string(k) +
                                           " (its label, generation " + std::to_string(r->label->generation) +
                                           ", calls it stale): copies that cannot be ordered");
        }
      }
      return Status::Ok();
    }
    // Labels of one generation agree (every writer's next generation goes to
    // each brick alike): one that disagrees at this generation was written by
    // another attachment (a degraded one that reached this brick and not the
    // others), and this brick holds writes this attachment's copies lack.
    if (r->label->same_identity(label) && r->label->index == index && r->label->generation == label.generation) {
      for (size_t k = 0; k < label.bricks.size(); k++) {
        if ((label.bricks[k].stale_since == 0) != (r->label->bricks[k].stale_since == 0)) {
          return Error(kErrWrongStore, where(b, index) + " holds a label of generation " +
                                           std::to_string(label.generation) + " that calls brick " + std::to_string(k) +
                                           (label.bricks[k].stale_since == 0 ? " stale" : " in sync") +
                                           " where " + vol + "'s calls it the other: written by another attachment; "
                                           "copies that cannot be ordered");
        }
      }
    }
    if (!r->label->same_identity(label) || r->label->index != index || r->label->generation != label.generation) {
      return Error(kErrWrongStore, where(b, index) + " now holds another label (generation " +
                                       std::to_string(r->label->generation) + ") than the one " + vol +
                                       " was attached with (generation " + std::to_string(label.generation) + ")");
    }
    return Status::Ok();
  };
  // Checked before the lock is taken (which allocates nothing on a brick that
  // holds the label), and again under it.
  PBRICK_TRY(check());
  if (read_only_) return Status::Ok();
  bool ours = false;
  Status locked = take_lock(b, index, *vaddr, attachment_, /*wait_for_exited=*/false, &ours);
  if (!locked && ours) {
    // Our previous connection still holds the lock: the brick has not yet
    // noticed it is dead. A connection error, so the caller retries until its
    // I/O timeout instead of failing at once.
    return Error(ETIMEDOUT, locked.error().context() + " (this attachment's previous connection; waiting for the "
                                                        "brick to drop it)");
  }
  PBRICK_TRY(locked);
  Status st = check();
  if (st) {
    // The lock was free, but another read-write attachment may have held it
    // while this one's connection was down (a brick restart dropped our
    // lock; it attached, wrote, went away): the label stays the same when it
    // had nothing to record, and its writes are not in this attachment's
    // caches and allocation map. Its holder record says so: never take the
    // volume back then. (A brick that holds no record: a replacement, or a
    // brick of a gateway that wrote none: nothing to go by.)
    bool recorded = false;
    {
      std::lock_guard lock(*mu_);
      recorded = index < recorded_.size() && recorded_[index] != 0;
    }
    auto bytes = recorded ? read_label_block(*b.control, *vaddr) : Result<std::vector<uint8_t>>(std::vector<uint8_t>{});
    if (!bytes) {
      st = bytes.error().wrap(where(b, index) + ": read holder record");
    } else if (bytes->size() == kLabelReadSize) {
      auto h = decode_holder(std::span<const uint8_t>(*bytes).subspan(kHolderOffset, kLabelSlotSize));
      if (h && h->volume_uuid == label.volume_uuid && h->attachment != attachment_) {
        st = Error(EBUSY, "volume at " + format_hex(b.base) + " on " + where(b, index) + " was attached by " +
                              h->to_string() + " while this attachment's connection there was down: "
                              "it writes nothing more there");
      }
    }
  }
  if (st) {
    auto holder = encode_holder(this_holder(label.volume_uuid, attachment_));
    st = write_label_block(*b.control, *vaddr, kHolderOffset, holder).wrap_error(where(b, index));
  }
  if (st) {
    std::lock_guard lock(*mu_);
    if (recorded_.size() <= index) recorded_.resize(index + 1, 0);
    recorded_[index] = 1;
  }
  if (!st) (void)b.control->unmap(lock_vaddr_of(*vaddr));
  return st;
}

}  // namespace pbrick
