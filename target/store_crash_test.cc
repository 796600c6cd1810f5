// Crash-consistency tests of the store, in the spirit of LevelDB's
// fault_injection_test.
//
// CrashRegion is a PmemRegion with two images: the volatile one (what the CPU
// sees, what base() returns) and the persistent one (what survives power loss).
// Bytes reach the persistent image only through the persistence primitives:
// persist(), store_word_persist(), zero(), and drain() for earlier
// copy_nodrain() stores. While an operation runs, every persistence event is
// recorded, and after every step a checkpoint notes how many events happened
// and which 8-byte words differ between the two images (stored, not yet
// persistent).
//
// A crash image is then: the persistent image at the start, plus the first k
// events of a checkpoint, plus any subset of that checkpoint's pending words,
// since real caches may write back any dirty line early (8-byte words are the
// unit: an aligned 8-byte store never tears). The tests build hundreds of
// these, open a Store on each and check that it opens, that its contents are
// exactly the state before or after the interrupted operation (block data
// compared by hash), and that it keeps working (alloc, free, reopen).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/units.h"
#include "target/pmem_region.h"
#include "target/store.h"
#include "target/store_test_util.h"

namespace pbrick {
namespace {

constexpr uint64_t kSlots = 10;
constexpr uint64_t kRegionSize = kBlockSize + kSlots * kBlockSize;  // 22 MiB
constexpr uint64_t kChunk = 4096;                                   // granularity of dirty tracking
constexpr uint64_t kTopBlock = 0xFFFFFFFFFFE00000ull;
constexpr uint64_t kProbe = 0x7FFFFFE00000ull;  // never used by a scenario: the post-crash alloc
constexpr uint64_t kMapOffset = 4096;

// ---- Block contents -------------------------------------------------------------

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<uint8_t> block_data(uint64_t seed) {
  std::vector<uint8_t> out(kBlockSize);
  for (uint64_t i = 0; i < kBlockSize; i += 8) {
    uint64_t w = splitmix(seed);
    std::memcpy(out.data() + i, &w, 8);
  }
  return out;
}

// A fast 64-bit hash of one block (4 independent lanes, so it runs at memory
// speed); collisions between the handful of patterns used here are not a concern.
uint64_t hash_block(const uint8_t* p) {
  uint64_t h[4] = {1, 2, 3, 4};
  for (uint64_t i = 0; i < kBlockSize; i += 32) {
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      h[l] = (h[l] ^ w) * 0x9E3779B97F4A7C15ull;
      h[l] ^= h[l] >> 29;
    }
  }
  return h[0] ^ (h[1] * 3) ^ (h[2] * 5) ^ (h[3] * 7);
}

const uint64_t kZeroHash = [] {
  std::vector<uint8_t> zeros(kBlockSize);
  return hash_block(zeros.data());
}();

// What a store holds: vaddr -> hash of the block's contents.
using State = std::map<uint64_t, uint64_t>;

std::string describe(const State& s) {
  std::string out = "{";
  for (auto [v, h] : s) {
    // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict on
    // " " + std::string + "...".
    out += ' ';
    out += format_hex(v);
    out += h == kZeroHash ? ":zeros" : ":data";
  }
  return out + " }";
}

State read_state(Store& store) {
  State state;
  uint64_t cursor = 0;
  for (;;) {
    proto::ListReply r = store.list(cursor, proto::kMaxListExtents);
    for (const proto::Extent& e : r.extents) {
      for (uint64_t i = 0; i < e.block_count; ++i) {
        uint64_t v = e.start_vaddr + i * kBlockSize;
        auto off = store.slot_offset(v);
        EXPECT_TRUE(off.ok());
        if (off.ok()) state[v] = hash_block(store.region().base() + *off);
      }
    }
    if (!(r.list_flags & proto::kListMore)) return state;
    cursor = r.next_cursor;
  }
}

// vaddr -> slot offset of every block.
std::map<uint64_t, uint64_t> read_slots(const Store& store) {
  std::map<uint64_t, uint64_t> out;
  proto::ListReply r = store.list(0, proto::kMaxListExtents);
  EXPECT_EQ(r.list_flags, 0u);
  for (const proto::Extent& e : r.extents) {
    for (uint64_t i = 0; i < e.block_count; ++i) {
      uint64_t v = e.start_vaddr + i * kBlockSize;
      out[v] = *store.slot_offset(v);
    }
  }
  return out;
}

// ---- The two-image medium ----------------------------------------------------------

struct Event {
  bool zero = false;  // else a copy of `bytes`
  uint64_t off = 0;
  uint64_t len = 0;
  std::vector<uint8_t> bytes;
};

struct PendingWord {
  uint64_t off;
  uint64_t value;  // the volatile word, in memory byte order
};

struct Checkpoint {
  size_t events;  // persistence events that happened before this point
  std::vector<PendingWord> pending;
  int op;             // index of the operation that was running
  const char* where;  // which primitive had just run
};

class Media {
 public:
  Media() : v_(kRegionSize), p_(kRegionSize), maybe_pending_(kRegionSize / kChunk) {}

  uint8_t* volatile_image() { return v_.data(); }
  const std::vector<uint8_t>& start() const { return start_; }
  const std::vector<Event>& events() const { return events_; }
  const std::vector<Checkpoint>& checkpoints() const { return checkpoints_; }

  // Everything persistent now is the base of the crash images to come.
  void begin_recording() {
    start_ = p_;
    events_.clear();
    checkpoints_.clear();
    recording_ = true;
    op_ = 0;
    checkpoint("start");
  }
  void end_recording() { recording_ = false; }
  void set_op(int op) { op_ = op; }

  // ---- what the CPU does ----
  void write_volatile(uint64_t off, const void* src, uint64_t len) {
    std::memcpy(v_.data() + off, src, len);
    mark(off, len);
  }
  void zero_volatile(uint64_t off, uint64_t len) {
    std::memset(v_.data() + off, 0, len);
    mark(off, len);
  }
  // ---- what reaches media ----
  void persist_range(uint64_t off, uint64_t len) {
    Event e{false, off, len,
            std::vector<uint8_t>(v_.begin() + static_cast<ptrdiff_t>(off),
                                 v_.begin() + static_cast<ptrdiff_t>(off + len))};
    std::memcpy(p_.data() + off, e.bytes.data(), len);
    if (recording_) events_.push_back(std::move(e));
  }
  void persist_zero(uint64_t off, uint64_t len) {
    std::memset(p_.data() + off, 0, len);
    if (recording_) events_.push_back(Event{true, off, len, {}});
  }

  void checkpoint(const char* where) {
    if (!recording_) return;
    Checkpoint c{events_.size(), pending_words(), op_, where};
    if (!checkpoints_.empty()) {
      const Checkpoint& last = checkpoints_.back();
      // The same crash states as the previous checkpoint: nothing to add.
      if (last.events == c.events && last.op == c.op && last.pending.empty() && c.pending.empty()) {
        return;
      }
    }
    checkpoints_.push_back(std::move(c));
  }

 private:
  void mark(uint64_t off, uint64_t len) {
    for (uint64_t c = off / kChunk; c <= (off + len - 1) / kChunk; ++c) maybe_pending_[c] = true;
  }

  // Words that differ between the images, in chunks written since they last
  // agreed (all volatile writes go through write_volatile/zero_volatile).
  std::vector<PendingWord> pending_words() {
    std::vector<PendingWord> out;
    for (uint64_t c = 0; c < maybe_pending_.size(); ++c) {
      if (!maybe_pending_[c]) continue;
      const uint64_t base = c * kChunk;
      if (std::memcmp(v_.data() + base, p_.data() + base, kChunk) == 0) {
        maybe_pending_[c] = false;
        continue;
      }
      for (uint64_t off = base; off < base + kChunk; off += 8) {
        uint64_t vw, pw;
        std::memcpy(&vw, v_.data() + off, 8);
        std::memcpy(&pw, p_.data() + off, 8);
        if (vw != pw) out.push_back(PendingWord{off, vw});
      }
    }
    return out;
  }

  std::vector<uint8_t> v_;
  std::vector<uint8_t> p_;
  std::vector<bool> maybe_pending_;
  std::vector<uint8_t> start_;
  std::vector<Event> events_;
  std::vector<Checkpoint> checkpoints_;
  bool recording_ = false;
  int op_ = 0;
};

// What the store sees: modelled on pmem, where a store is volatile until its
// cache line is flushed and the flush drained.
class CrashRegion final : public PmemRegion {
 public:
  explicit CrashRegion(Media& m) : m_(m) {}
  uint8_t* base() override { return m_.volatile_image(); }
  uint64_t size() const override { return kRegionSize; }
  bool is_pmem() const override { return true; }

  void copy_nodrain(uint64_t off, const void* src, size_t len) override {
    ASSERT_LE(off + len, kRegionSize);
    m_.write_volatile(off, src, len);
    nodrain_.emplace_back(off, len);
    m_.checkpoint("copy_nodrain");
  }
  void drain() override {
    for (auto [off, len] : nodrain_) m_.persist_range(off, len);
    nodrain_.clear();
    m_.checkpoint("drain");
  }
  Status persist(uint64_t off, uint64_t len) override {
    if (off + len > kRegionSize) return Error(EINVAL, "persist out of range");
    m_.persist_range(off, len);
    m_.checkpoint("persist");
    return Status::Ok();
  }
  Status store_word_persist(uint64_t off, uint64_t value) override {
    if (off % 8 != 0 || off + 8 > kRegionSize) return Error(EINVAL, "bad word offset");
    m_.write_volatile(off, &value, 8);
    m_.checkpoint("word stored");
    m_.persist_range(off, 8);
    m_.checkpoint("word persisted");
    return Status::Ok();
  }
  Status zero(uint64_t off, uint64_t len) override {
    if (off + len > kRegionSize) return Error(EINVAL, "zero out of range");
    m_.zero_volatile(off, len);
    m_.checkpoint("zero stored");
    m_.persist_zero(off, len);
    m_.checkpoint("zero persisted");
    return Status::Ok();
  }
  int sync_fd() const override { return -1; }

 private:
  Media& m_;
  std::vector<std::pair<uint64_t, uint64_t>> nodrain_;
};

// ---- Crash images ------------------------------------------------------------------

// Builds crash images in one reusable buffer. `persisted_` is the persistent
// image after the first `applied_` recorded events; it only moves forward, as
// checkpoints come in event order. The image is `persisted_` plus the chosen
// pending words plus whatever the store wrote after the "crash"; rebuilding
// copies back only the chunks where the two may differ, which keeps hundreds of
// 22 MiB images cheap.
class ImageBuilder {
 public:
  ImageBuilder() : img_(kRegionSize), dirty_(kRegionSize / kChunk) {}

  void restart() { valid_ = false; }  // a new recording

  // Makes the image the persistent image after `events` events of `m`.
  void build(const Media& m, size_t events) {
    if (!valid_ || events < applied_) {
      persisted_ = m.start();
      std::memcpy(img_.data(), persisted_.data(), kRegionSize);
      std::fill(dirty_.begin(), dirty_.end(), false);
      applied_ = 0;
      valid_ = true;
    }
    for (; applied_ < events; ++applied_) {
      const Event& e = m.events()[applied_];
      if (e.zero) {
        std::memset(persisted_.data() + e.off, 0, e.len);
      } else {
        std::memcpy(persisted_.data() + e.off, e.bytes.data(), e.len);
      }
      mark(e.off, e.len);
    }
    for (uint64_t c = 0; c < dirty_.size(); ++c) {
      if (dirty_[c]) {
        std::memcpy(img_.data() + c * kChunk, persisted_.data() + c * kChunk, kChunk);
        dirty_[c] = false;
      }
    }
  }

  uint8_t* data() { return img_.data(); }
  void write(uint64_t off, const void* src, uint64_t len) {
    std::memcpy(img_.data() + off, src, len);
    mark(off, len);
  }
  void zero(uint64_t off, uint64_t len) {
    std::memset(img_.data() + off, 0, len);
    mark(off, len);
  }

 private:
  void mark(uint64_t off, uint64_t len) {
    if (len == 0) return;
    for (uint64_t c = off / kChunk; c <= (off + len - 1) / kChunk; ++c) dirty_[c] = true;
  }

  std::vector<uint8_t> img_;
  std::vector<uint8_t> persisted_;
  std::vector<bool> dirty_;  // chunks where img_ may differ from persisted_
  size_t applied_ = 0;
  bool valid_ = false;
};

// A crash image as a region: after the crash nothing is volatile any more, so
// every write is immediately "persistent" (it lands in the scratch buffer).
// The store writes only through these methods, which keeps dirty tracking exact.
class ImageRegion final : public PmemRegion {
 public:
  explicit ImageRegion(ImageBuilder& s) : s_(s) {}
  uint8_t* base() override { return s_.data(); }
  uint64_t size() const override { return kRegionSize; }
  bool is_pmem() const override { return true; }
  void copy_nodrain(uint64_t off, const void* src, size_t len) override { s_.write(off, src, len); }
  void drain() override {}
  Status persist(uint64_t, uint64_t) override { return Status::Ok(); }
  Status store_word_persist(uint64_t off, uint64_t value) override {
    s_.write(off, &value, 8);
    return Status::Ok();
  }
  Status zero(uint64_t off, uint64_t len) override {
    s_.zero(off, len);
    return Status::Ok();
  }
  int sync_fd() const override { return -1; }

 private:
  ImageBuilder& s_;
};

// Which pending words a crash image includes. Always none and all; with few
// words each one alone and all but each one (for a map entry: one half of the
// 16 bytes without the other); with many, a few random subsets.
std::vector<std::vector<bool>> pending_variants(size_t n, std::mt19937_64& rng) {
  std::set<std::vector<bool>> out;
  out.insert(std::vector<bool>(n, false));
  out.insert(std::vector<bool>(n, true));
  if (n <= 8) {
    for (size_t i = 0; i < n; ++i) {
      std::vector<bool> one(n, false), all_but_one(n, true);
      one[i] = true;
      all_but_one[i] = false;
      out.insert(one);
      out.insert(all_but_one);
    }
  } else {
    for (int k = 0; k < 4; ++k) {
      std::vector<bool> m(n);
      for (size_t i = 0; i < n; ++i) m[i] = (rng() & 1) != 0;
      out.insert(m);
    }
  }
  return {out.begin(), out.end()};
}

class CrashTest : public ::testing::Test {
 protected:
  // Every crash image that formats logs a notice; keep the output readable.
  void SetUp() override { set_log_level(LogLevel::kWarning); }
  void TearDown() override { set_log_level(LogLevel::kInfo); }

  // Opens a store on the medium outside of any recording (setup).
  std::unique_ptr<Store> open_live(StoreOpenOptions options = {}) {
    auto store = Store::Open(std::make_unique<CrashRegion>(media_), options);
    EXPECT_TRUE(store.ok()) << store.error().message();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  // Fills a block with a pattern, durably, as a client's WRITE would.
  uint64_t write_block(Store& store, uint64_t vaddr, uint64_t seed) {
    auto off = store.slot_offset(vaddr);
    EXPECT_TRUE(off.ok());
    std::vector<uint8_t> data = block_data(seed);
    media_.write_volatile(*off, data.data(), kBlockSize);
    media_.persist_range(*off, kBlockSize);
    media_.checkpoint("data written");
    return hash_block(data.data());
  }

  // Records the operations run by `body`. `body` calls next_op(state) after each
  // operation with the state the store must now be in; states_[0] is the state
  // before the first operation.
  void record(const State& initial, const std::function<void()>& body) {
    scratch_.restart();
    states_ = {initial};
    media_.begin_recording();
    body();
    media_.end_recording();
  }
  void next_op(const State& after) {
    states_.push_back(after);
    media_.set_op(static_cast<int>(states_.size()) - 2);  // turns states_[op] into states_[op + 1]
  }

  // Three blocks with data, including vaddr 0 and the top of the address space.
  State populate(Store& store) {
    State s;
    for (uint64_t v : {uint64_t{0}, 5 * kBlockSize, kTopBlock}) {
      EXPECT_TRUE(store.alloc(v).ok());
      s[v] = write_block(store, v, v + 1);
    }
    return s;
  }

  // Builds every crash image of the recording in scratch_ and calls
  // check(op, label) on each; op indexes the operation that was interrupted.
  size_t for_each_crash_image(const std::function<void(int op, const std::string& label)>& check) {
    std::mt19937_64 rng(20240601);
    size_t images = 0;
    const auto& cps = media_.checkpoints();
    for (size_t ci = 0; ci < cps.size(); ++ci) {
      const Checkpoint& c = cps[ci];
      for (const std::vector<bool>& mask : pending_variants(c.pending.size(), rng)) {
        build_image(c, mask);
        size_t included = static_cast<size_t>(std::count(mask.begin(), mask.end(), true));
        std::string label = "checkpoint " + std::to_string(ci) + " (op " + std::to_string(c.op) +
                            ", after " + c.where + ", " + std::to_string(c.events) + " events, " +
                            std::to_string(included) + "/" + std::to_string(c.pending.size()) +
                            " pending words)";
        check(c.op, label);
        ++images;
        if (::testing::Test::HasFatalFailure()) return images;
      }
    }
    return images;
  }

  void build_image(const Checkpoint& c, const std::vector<bool>& mask) {
    scratch_.build(media_, c.events);
    for (size_t i = 0; i < c.pending.size(); ++i) {
      if (mask[i]) scratch_.write(c.pending[i].off, &c.pending[i].value, 8);
    }
  }

  // The check for block operations: the image opens, holds exactly the state
  // before or after the interrupted operation, and keeps working.
  void check_block_op(int op, const std::string& label) {
    SCOPED_TRACE(label);
    std::map<uint64_t, uint64_t> slots;
    {
      auto store = Store::Open(std::make_unique<ImageRegion>(scratch_), {});
      ASSERT_TRUE(store.ok()) << store.error().message();
      State actual = read_state(**store);
      const State& before = states_[static_cast<size_t>(op)];
      const State& after = states_[std::min(static_cast<size_t>(op) + 1, states_.size() - 1)];
      ASSERT_TRUE(actual == before || actual == after)
          << "crash state " << describe(actual) << " is neither " << describe(before) << " nor "
          << describe(after);
      // Still usable: a new block reads as zeros, an old one can be freed.
      ASSERT_TRUE((*store)->alloc(kProbe).ok());
      auto probe = (*store)->slot_offset(kProbe);
      ASSERT_TRUE(probe.ok());
      ASSERT_EQ(hash_block(scratch_.data() + *probe), kZeroHash);
      if (!actual.empty()) {
        ASSERT_TRUE((*store)->free(actual.begin()->first).ok());
      }
      slots = read_slots(**store);
      ASSERT_EQ(slots.size(), std::max<size_t>(actual.size(), 1)) << "one freed, the probe added";
    }
    // And what it did is what a reopen finds (the same blocks in the same
    // slots; contents were compared above).
    auto again = Store::Open(std::make_unique<ImageRegion>(scratch_),
                             {.force_format = false, .format_if_blank = false});
    ASSERT_TRUE(again.ok()) << again.error().message();
    ASSERT_EQ(read_slots(**again), slots);
  }

  void run_block_op_checks() {
    size_t images = for_each_crash_image(
        [this](int op, const std::string& label) { check_block_op(op, label); });
    RecordProperty("crash_images", static_cast<int>(images));
    std::printf("[          ] %zu crash images from %zu checkpoints\n", images,
                media_.checkpoints().size());
  }

  Media media_;
  ImageBuilder scratch_;
  std::vector<State> states_;
};

TEST_F(CrashTest, Alloc) {
  auto store = open_live();
  ASSERT_TRUE(store);
  State s = populate(*store);
  // Leave dirty data in the slot the alloc will take: the store must zero it.
  ASSERT_TRUE(store->alloc(kBlockSize).ok());
  write_block(*store, kBlockSize, 99);
  const uint64_t dirty_slot = *store->slot_offset(kBlockSize);
  ASSERT_TRUE(store->free(kBlockSize).ok());
  std::vector<uint8_t> junk = block_data(1234);
  media_.write_volatile(dirty_slot, junk.data(), kBlockSize);
  media_.persist_range(dirty_slot, kBlockSize);

  record(s, [&] {
    next_op([&] {
      State n = s;
      n[3 * kBlockSize] = kZeroHash;
      return n;
    }());
    ASSERT_TRUE(store->alloc(3 * kBlockSize).ok());
  });
  EXPECT_EQ(*store->slot_offset(3 * kBlockSize), dirty_slot);
  run_block_op_checks();
}

TEST_F(CrashTest, Free) {
  auto store = open_live();
  ASSERT_TRUE(store);
  State s = populate(*store);
  record(s, [&] {
    next_op([&] {
      State n = s;
      n.erase(5 * kBlockSize);
      return n;
    }());
    ASSERT_TRUE(store->free(5 * kBlockSize).ok());
  });
  run_block_op_checks();
}

TEST_F(CrashTest, AllocAfterFreeReusesTheSlot) {
  auto store = open_live();
  ASSERT_TRUE(store);
  State s = populate(*store);
  const uint64_t slot = *store->slot_offset(5 * kBlockSize);
  record(s, [&] {
    State after_free = s;
    after_free.erase(5 * kBlockSize);
    next_op(after_free);
    ASSERT_TRUE(store->free(5 * kBlockSize).ok());
    State after_alloc = after_free;
    after_alloc[kTopBlock - kBlockSize] = kZeroHash;
    next_op(after_alloc);
    ASSERT_TRUE(store->alloc(kTopBlock - kBlockSize).ok());
  });
  EXPECT_EQ(*store->slot_offset(kTopBlock - kBlockSize), slot)
      << "the scenario must reuse the freed block's slot";
  run_block_op_checks();
}

// Many operations in one recording: allocs, frees and data writes at random,
// each crash point checked against the states around its operation.
class RandomCrashTest : public CrashTest, public ::testing::WithParamInterface<uint64_t> {};

TEST_P(RandomCrashTest, Sequence) {
  auto store = open_live();
  ASSERT_TRUE(store);
  std::mt19937_64 rng(GetParam());
  const uint64_t pool[] = {0,          kBlockSize, 2 * kBlockSize,         7 * kBlockSize,
                           0x40000000, 0x40200000, kTopBlock - kBlockSize, kTopBlock};
  State s;
  record(s, [&] {
    for (int i = 0; i < 50; ++i) {
      uint64_t v = pool[rng() % std::size(pool)];
      bool present = s.contains(v);
      if (!present && s.size() < kSlots - 2) {
        s[v] = kZeroHash;
        next_op(s);
        ASSERT_TRUE(store->alloc(v).ok());
      } else if (present && rng() % 2 == 0) {
        const uint64_t seed = GetParam() * 1000 + static_cast<uint64_t>(i);
        s[v] = hash_block(block_data(seed).data());
        next_op(s);
        write_block(*store, v, seed);
      } else if (present) {
        s.erase(v);
        next_op(s);
        ASSERT_TRUE(store->free(v).ok());
      }
    }
  });
  ASSERT_EQ(read_state(*store), s);
  run_block_op_checks();
}

// Under AddressSanitizer a seed takes 45 s of CPU against 4 s, most of the
// sanitize tier's: it runs one seed, the release tree all three (the same
// code, other crash points).
#if defined(__SANITIZE_ADDRESS__)
#define PBRICK_CRASH_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PBRICK_CRASH_TEST_ASAN 1
#endif
#endif
#ifdef PBRICK_CRASH_TEST_ASAN
INSTANTIATE_TEST_SUITE_P(Seeds, RandomCrashTest, ::testing::Values(42u));
#else
INSTANTIATE_TEST_SUITE_P(Seeds, RandomCrashTest, ::testing::Values(42u, 7u, 2024u));
#endif

// The two halves of a map entry. An alloc writes the location word, persists
// it, and only then stores the key; so "location without key" is a reachable
// crash state (harmless: key 0 means free) and "key without location" is not.
// The latter would be unsafe, as this test shows, which is why the order matters.
TEST_F(CrashTest, TornEntryHalves) {
  {
    auto store = open_live();
    ASSERT_TRUE(store);
  }
  // Make entry and slot numbering diverge (as a future tier move would): entry
  // 0 holds block 0x40000000 in slot 2; entry 1 is free with a stale location
  // pointing to a slot that does not exist.
  uint8_t* map = media_.volatile_image() + kMapOffset;
  const uint64_t key0 = layout_test::v2_key(0x40000000), stale = 0xABCDEF;
  const uint64_t loc0 = layout_test::v2_location(0, key0, 2);
  media_.write_volatile(kMapOffset, &key0, 8);
  media_.write_volatile(kMapOffset + 8, &loc0, 8);
  media_.write_volatile(kMapOffset + 24, &stale, 8);
  media_.persist_range(kMapOffset, 32);
  auto store = open_live({.force_format = false, .format_if_blank = false});
  ASSERT_TRUE(store);
  State s{{0x40000000, kZeroHash}};
  record(s, [&] {
    next_op(State{{0x40000000, kZeroHash}, {0, kZeroHash}});
    ASSERT_TRUE(store->alloc(0).ok());  // takes entry 1 and slot 0
  });
  uint64_t key1, loc1;
  std::memcpy(&key1, map + 16, 8);
  std::memcpy(&loc1, map + 24, 8);
  ASSERT_EQ(key1, layout_test::v2_key(0));
  ASSERT_EQ(loc1, layout_test::v2_location(1, key1, 0));
  run_block_op_checks();

  // Every reachable crash state with the new key already has the new location.
  size_t with_key = 0;
  for (const Checkpoint& c : media_.checkpoints()) {
    std::mt19937_64 rng(1);
    for (const std::vector<bool>& mask : pending_variants(c.pending.size(), rng)) {
      build_image(c, mask);
      uint64_t k, l;
      std::memcpy(&k, scratch_.data() + kMapOffset + 16, 8);
      std::memcpy(&l, scratch_.data() + kMapOffset + 24, 8);
      if (k == key1) {
        ++with_key;
        EXPECT_EQ(l, loc1) << "key persistent before location at checkpoint " << c.where;
      }
    }
  }
  EXPECT_GT(with_key, 0u);

  // Location without key: the entry is still free.
  scratch_.build(media_, 0);
  scratch_.write(kMapOffset + 24, &loc1, 8);
  {
    auto img = Store::Open(std::make_unique<ImageRegion>(scratch_), {});
    ASSERT_TRUE(img.ok()) << img.error().message();
    EXPECT_EQ(read_state(**img), s);
  }
  // Key without location (unreachable): the stale location would be used.
  scratch_.build(media_, 0);
  scratch_.write(kMapOffset + 16, &key1, 8);
  auto img = Store::Open(std::make_unique<ImageRegion>(scratch_), {});
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.error().context().find("map entry 1"), std::string::npos);
}

// ---- Format ----------------------------------------------------------------------------

class FormatCrashTest : public CrashTest {
 protected:
  // A crash during a format leaves the old store (intact), a region without a
  // store ("interrupted", or blank), or the new empty store; never something
  // that opens half-formatted or is refused as corrupt.
  // `forced`: the region before the format is refused without --force-format
  // (a zero superblock over a map that is not), and the brick is started
  // again with it.
  void check_format(const std::optional<std::array<uint8_t, 16>>& old_uuid, const State& old_state,
                    const std::array<uint8_t, 16>& new_uuid, const std::string& label, bool forced = false) {
    SCOPED_TRACE(label);
    {
      auto strict = Store::Open(std::make_unique<ImageRegion>(scratch_),
                                {.force_format = false, .format_if_blank = false});
      if (strict.ok()) {
        State actual = read_state(**strict);
        if (old_uuid && (*strict)->uuid() == *old_uuid) {
          ASSERT_EQ(actual, old_state) << "the old store must be intact";
        } else {
          ASSERT_EQ((*strict)->uuid(), new_uuid);
          ASSERT_TRUE(actual.empty()) << describe(actual);
        }
      } else {
        ASSERT_EQ(strict.error().errnum(), EUCLEAN) << strict.error().message();
        const std::string& why = strict.error().context();
        ASSERT_TRUE(why.find("interrupted") != std::string::npos || why.find("blank") != std::string::npos ||
                    (forced && why.find("superblock was overwritten") != std::string::npos))
            << "a crash during format must not look like corruption: " << why;
      }
    }
    {
      auto store = Store::Open(std::make_unique<ImageRegion>(scratch_), {.force_format = forced});
      ASSERT_TRUE(store.ok()) << store.error().message();
      State actual = read_state(**store);
      if (!(old_uuid && (*store)->uuid() == *old_uuid)) {
        ASSERT_TRUE(actual.empty()) << describe(actual);
      }
      ASSERT_TRUE((*store)->alloc(kProbe).ok());
      ASSERT_EQ(hash_block(scratch_.data() + *(*store)->slot_offset(kProbe)), kZeroHash);
    }
  }
};

TEST_F(FormatCrashTest, ForceFormatOverAStore) {
  std::array<uint8_t, 16> old_uuid;
  State old_state;
  {
    auto store = open_live();
    ASSERT_TRUE(store);
    old_uuid = store->uuid();
    old_state = populate(*store);
  }
  std::array<uint8_t, 16> new_uuid;
  record(old_state, [&] {
    next_op(State{});
    auto store = Store::Open(std::make_unique<CrashRegion>(media_), {.force_format = true});
    ASSERT_TRUE(store.ok()) << store.error().message();
    new_uuid = (*store)->uuid();
  });
  size_t images = for_each_crash_image(
      [&](int, const std::string& label) { check_format(old_uuid, old_state, new_uuid, label); });
  std::printf("[          ] %zu crash images from %zu checkpoints\n", images,
              media_.checkpoints().size());
  EXPECT_GT(images, 10u);
}

TEST_F(FormatCrashTest, FormatOfABlankSuperblockOverAGarbageMap) {
  // A region whose superblock area is zero but whose map area holds junk (a
  // reused device, or a store whose superblock was overwritten): formatted
  // only with --force-format, and a crash mid-format must not let the junk
  // appear as blocks.
  std::mt19937_64 rng(5);
  std::vector<uint8_t> junk(kBlockSize - kMapOffset);
  for (auto& b : junk) b = static_cast<uint8_t>(rng() | 1);
  media_.write_volatile(kMapOffset, junk.data(), junk.size());
  media_.persist_range(kMapOffset, junk.size());

  std::array<uint8_t, 16> new_uuid;
  record(State{}, [&] {
    next_op(State{});
    auto refused = Store::Open(std::make_unique<CrashRegion>(media_), {});
    ASSERT_FALSE(refused.ok()) << "formatted without --force-format";
    auto store = Store::Open(std::make_unique<CrashRegion>(media_), {.force_format = true});
    ASSERT_TRUE(store.ok()) << store.error().message();
    new_uuid = (*store)->uuid();
  });
  size_t images = for_each_crash_image(
      [&](int, const std::string& label) { check_format(std::nullopt, State{}, new_uuid, label, true); });
  std::printf("[          ] %zu crash images from %zu checkpoints\n", images,
              media_.checkpoints().size());
  EXPECT_GT(images, 10u);
}

// No crash state of alloc and free looks like corruption: the offline check
// (pbrickctl fsck) finds every crash image clean, with the blocks Open() finds.
TEST_F(CrashTest, EveryCrashImageOfAllocAndFreeChecksClean) {
  auto store = open_live();
  ASSERT_TRUE(store);
  State s = populate(*store);
  record(s, [&] {
    State after_free = s;
    after_free.erase(0);
    next_op(after_free);
    ASSERT_TRUE(store->free(0).ok());
    State after_alloc = after_free;
    after_alloc[kBlockSize] = kZeroHash;
    next_op(after_alloc);
    ASSERT_TRUE(store->alloc(kBlockSize).ok());
  });
  size_t images = for_each_crash_image([&](int op, const std::string& label) {
    StoreCheckReport report = Store::Check(scratch_.data(), kRegionSize);
    ASSERT_TRUE(report.clean()) << label << ": " << report.superblock_error
                                << (report.map_problems.empty() ? ""
                                                                : report.map_problems[0].what);
    ASSERT_EQ(report.layout_version, 2u);
    const size_t before = states_[static_cast<size_t>(op)].size();
    const size_t after = states_[static_cast<size_t>(op) + 1].size();
    ASSERT_TRUE(report.allocated_blocks == before || report.allocated_blocks == after) << label;
  });
  EXPECT_GT(images, 10u);
}

// ---- Upgrade from layout version 1 ----------------------------------------------

// Opening a version-1 store converts every map entry and then the superblock
// (docs/layout.md, "Upgrade from version 1"). A crash at any point of it must
// leave a store that opens with exactly the same blocks and data, and finishes
// the upgrade.
TEST_F(CrashTest, UpgradeFromVersionOne) {
  const std::array<uint8_t, 16> uuid = {9, 8, 7, 6, 5, 4, 0x43, 2, 0x81, 0, 1, 2, 3, 4, 5, 6};
  // Entry and slot numbering differ; entry 1 is a freed block with its stale location.
  const std::vector<layout_test::V1Block> v1 = {
      {0x40000000, 4}, {7 * kBlockSize, 1}, {0, 0}, {kTopBlock, 9}, {5 * kBlockSize, 2}};
  std::vector<uint8_t> image(kBlockSize);
  layout_test::write_v1_store(image.data(), kRegionSize, v1, uuid);
  std::memset(image.data() + kMapOffset + 16, 0, 8);
  media_.write_volatile(0, image.data(), image.size());
  media_.persist_range(0, image.size());
  State s;
  for (const auto& b : v1) {
    if (b.vaddr == 7 * kBlockSize) continue;  // freed
    std::vector<uint8_t> data = block_data(b.vaddr + 77);
    media_.write_volatile(kBlockSize + b.slot * kBlockSize, data.data(), kBlockSize);
    media_.persist_range(kBlockSize + b.slot * kBlockSize, kBlockSize);
    s[b.vaddr] = hash_block(data.data());
  }

  record(s, [&] {
    next_op(s);
    auto store = Store::Open(std::make_unique<CrashRegion>(media_),
                             {.force_format = false, .format_if_blank = false});
    ASSERT_TRUE(store.ok()) << store.error().message();
    ASSERT_EQ(read_state(**store), s);
  });
  uint32_t version;
  std::memcpy(&version, media_.volatile_image() + 8, 4);
  ASSERT_EQ(version, 2u) << "the recording must have upgraded the store";

  // Which states the crash images cover: every one must open as the same store.
  size_t v1_images = 0, interrupted_images = 0, v2_images = 0;
  size_t images = for_each_crash_image([&](int op, const std::string& label) {
    StoreCheckReport report = Store::Check(scratch_.data(), kRegionSize);
    ASSERT_TRUE(report.clean()) << label << ": " << report.superblock_error
                                << (report.map_problems.empty() ? ""
                                                                : report.map_problems[0].what);
    ASSERT_EQ(report.uuid, uuid);
    if (report.layout_version == 2) {
      ++v2_images;
    } else if (report.upgrade_interrupted) {
      ++interrupted_images;
    } else {
      ++v1_images;
    }
    check_block_op(op, label);
    // check_block_op's Open finished the upgrade.
    std::memcpy(&version, scratch_.data() + 8, 4);
    ASSERT_EQ(version, 2u) << label;
  });
  std::printf("[          ] %zu crash images (%zu version 1, %zu upgrade interrupted, %zu version 2)\n",
              images, v1_images, interrupted_images, v2_images);
  EXPECT_GT(v1_images, 0u);
  EXPECT_GT(interrupted_images, 0u);
  EXPECT_GT(v2_images, 0u);
}

}  // namespace
}  // namespace pbrick
