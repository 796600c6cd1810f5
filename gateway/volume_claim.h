// Attaching a volume: its label on every brick (gateway/volume_label.h) is read
// and checked, the one-writer lock is taken, and the labels are written when
// the attach creates or grows the volume. The brick side of it, over each
// brick's control connection; the checks themselves are plan_labels().
//
// One writer per volume: a read-write attach maps each brick's lock block
// exclusively (MAP without kMapShared) on that brick's control connection, and
// keeps the mapping as long as the connection lives. The brick refuses every
// other mapping of the block with EBUSY and drops the mapping when the
// connection dies, so a killed holder frees the volume by itself. The holder
// records who it is in the label block (shared-mappable), so a refused
// attacher names it. Read-only attaches check the labels but take no lock.
//
// Order of writes (docs/layout.md, "Volume label"): nothing is written before
// every brick's label was read and the whole set checked, so a refused attach
// changes no brick; a first attach writes an uncommitted label on every brick,
// durably, before it commits any, so a half-written set is never a volume.
//
// Not thread-safe: the caller serialises it with the control connections it
// borrows (Volume does it under its control mutex).
#pragma once

#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/client.h"
#include "common/result.h"
#include "gateway/volume_label.h"

namespace pbrick {

struct ClaimBrick {
  // Connected; borrowed for the call. Null: a mirror's brick missing at a
  // --degraded attach (plan_labels takes its place on the others' word).
  BrickClient* control = nullptr;
  std::string endpoint;            // for messages
  uint64_t base = 0;               // the volume's base on this brick
};

class VolumeClaim {
 public:
  // Reads and checks every brick's label, then (read-write) takes every
  // brick's lock in brick order and writes what the plan says. EBUSY naming
  // the holder when another attachment holds the volume; the errors of
  // plan_labels() for a brick that does not belong. Nothing is written on any
  // brick unless every check passed; a lock taken before a failure is released.
  static Result<VolumeClaim> Acquire(std::span<const ClaimBrick> bricks, const LabelRequest& request);

  // After brick `index`'s control connection was re-established: checks that
  // it still serves this volume's label (same volume, place and generation)
  // and, read-write, takes its lock again (EBUSY naming the holder if someone
  // else took it meanwhile: I/O must fail, never two writers; ETIMEDOUT, a
  // connection error to retry, while this attachment's previous connection still
  // holds it because the brick has not yet noticed that connection died).
  // Layout mirror, `stale`: the brick's copies are stale, so its label is an
  // older generation of the same volume at the same place; refused
  // (kErrWrongStore, naming the brick) when it calls stale a brick this
  // label holds in sync: another attachment wrote to it alone (split brain).
  Status reacquire(size_t index, const ClaimBrick& brick, bool stale = false) const;

  // Layout mirror, read-write: the attachment before this one did not
  // detach cleanly (its holder record on a brick holding in-sync copies
  // never said closed, or is damaged): copies of blocks it wrote may differ.
  bool last_writer_left_uncleanly() const { return left_uncleanly_; }
  // This attachment detaches cleanly: its holder record on brick `index`
  // says so, durably (HolderRecord::closed). Only where its record was
  // written; nothing for a read-only claim. EBUSY when the record there is
  // another attachment's now (it took the volume while this one's control
  // connection was down).
  Status record_closed(size_t index, const ClaimBrick& brick) const;

  // The committed label every brick holds (its `index` is brick 0's).
  VolumeLabel label() const { return current(); }

  // Layout mirror, read-write, recording stale copies (Volume::mark_stale
  // builds the label at a higher generation): write_label_to() writes it to
  // one brick, durably (the slot not holding its newest label, so a torn write leaves the
  // previous one); once every in-sync brick has it, commit() makes it the
  // label reconnects expect. The caller serialises these (Volume's label
  // mutex) and holds each brick's control.
  static Status write_label_to(const ClaimBrick& brick, size_t index, const VolumeLabel& label);
  void commit(const VolumeLabel& label);
  // The generation of the next label to write: above every one this
  // attachment proposed, committed or not. A write whose reply was lost may
  // have landed, so no generation is ever used for two different labels.
  uint64_t next_generation() const;
  // Before write_label_to() of a label not committed yet: from then on
  // reacquire() takes a brick holding it (or an earlier proposal) for one
  // of this attachment's, as when the connection died after the write
  // landed and before its reply came back.
  void propose(const VolumeLabel& label);
  // Layout mirror: writes `byte` (bits of the dirty bitmap, volume.h) at
  // byte `index` of the bitmap of `brick`, durably.
  static Status record_dirty(const ClaimBrick& brick, uint64_t index, uint8_t byte);
  // The first `bytes` bytes of `brick`'s dirty bitmap.
  static Result<std::vector<uint8_t>> read_dirty(const ClaimBrick& brick, size_t bytes);
  // Layout mirror: the first bytes of `brick`'s bitmap replaced by `bits`
  // (all zeros: cleared once no copy is stale; a replaced brick's blocks),
  // durably.
  static Status write_dirty(const ClaimBrick& brick, std::span<const uint8_t> bits);
  // The newest label `brick` holds at the volume's base (committed or not);
  // none when it holds no label.
  static Result<std::optional<VolumeLabel>> read_label(const ClaimBrick& brick);
  // Layout mirror, a brick to take another's place: EEXIST when it holds a
  // label (of any volume) at the volume's base.
  static Status check_unlabelled(const ClaimBrick& brick);

 private:
  VolumeClaim(VolumeLabel label, bool read_only, const Uuid& attachment = {}, std::vector<uint8_t> recorded = {})
      : label_(std::move(label)), read_only_(read_only), attachment_(attachment), recorded_(std::move(recorded)) {}
  VolumeLabel current() const;

  // Guards label_ once the claim is held (commit() against reacquire() on
  // another brick's reconnect); a pointer so the claim stays movable.
  std::shared_ptr<std::mutex> mu_ = std::make_shared<std::mutex>();
  VolumeLabel label_;
  uint64_t proposed_ = 0;  // the highest generation proposed (under mu_)
  bool read_only_ = false;
  Uuid attachment_{};  // read-write: in the holder records it writes
  HolderRecord holder_;  // read-write: the record written at attach
  bool left_uncleanly_ = false;
  // By brick (under mu_): whether this attachment's holder record was
  // written there. Only there does another attachment's record mean one
  // held the volume meanwhile (a brick missing at a degraded attach still
  // holds the record of the attachment before).
  mutable std::vector<uint8_t> recorded_;
};

}  // namespace pbrick
