// The volume label: its byte format (docs/layout.md, "Volume label"), the
// checks of a brick set, and the claim against real bricks over TCP.
#include "gateway/volume_label.h"

#include <sys/wait.h>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "common/crc32c.h"
#include "gateway/data_channel.h"
#include "gateway/test_brick.h"
#include "gateway/volume.h"
#include "gateway/volume_claim.h"

namespace pbrick {
namespace {

constexpr uint64_t kMiB = 1 << 20;

Uuid uuid_of(uint8_t seed) {
  Uuid u{};
  for (size_t i = 0; i < u.size(); i++) u[i] = static_cast<uint8_t>(seed + i);
  return u;
}

VolumeLabel sample(uint32_t bricks = 3) {
  VolumeLabel l;
  l.flags = kLabelCommitted;
  l.generation = 7;
  l.volume_uuid = uuid_of(0x10);
  l.name = "db-1";
  l.layout = bricks == 1 ? Layout::kSingle : Layout::kStripe;
  l.index = bricks - 1;
  l.size = 96 * kMiB;
  l.created = 1700000000;
  for (uint32_t i = 0; i < bricks; i++) l.bricks.push_back({uuid_of(static_cast<uint8_t>(0x40 + 0x10 * i)), 4 * kMiB * i});
  return l;
}

void reseal(std::array<uint8_t, kLabelSlotSize>& slot) {
  uint32_t crc = crc32c(slot.data(), kLabelSlotSize - 4);
  std::memcpy(slot.data() + kLabelSlotSize - 4, &crc, 4);  // little-endian host (x86-64, aarch64)
}

TEST(VolumeLabelCodec, RoundTripsEveryField) {
  VolumeLabel l = sample();
  auto bytes = encode_label(l);
  auto d = decode_label(bytes);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->flags, l.flags);
  EXPECT_EQ(d->generation, 7u);
  EXPECT_EQ(d->volume_uuid, l.volume_uuid);
  EXPECT_EQ(d->name, "db-1");
  EXPECT_EQ(d->layout, Layout::kStripe);
  EXPECT_EQ(d->index, 2u);
  EXPECT_EQ(d->size, 96 * kMiB);
  EXPECT_EQ(d->created, 1700000000u);
  EXPECT_EQ(d->bricks, l.bricks);
}

// The offsets docs/layout.md gives, checked byte by byte.
TEST(VolumeLabelCodec, MatchesTheDocumentedLayout) {
  auto b = encode_label(sample());
  EXPECT_EQ(std::memcmp(b.data(), "PBRKVLBL", 8), 0);
  EXPECT_EQ(b[8], 1);    // version
  EXPECT_EQ(b[12], 1);   // flags: committed
  EXPECT_EQ(b[16], 7);   // generation
  EXPECT_EQ(b[24], 0x10);  // volume uuid
  EXPECT_EQ(b[40], 1);   // layout stripe
  EXPECT_EQ(b[44], 2);   // index
  EXPECT_EQ(b[48], 3);   // brick count
  EXPECT_EQ(b[52], 4);   // name length
  EXPECT_EQ(std::memcmp(b.data() + 56, "db-1", 4), 0);
  EXPECT_EQ(b[120 + 3], 0x06);  // size 96 MiB = 0x06000000
  EXPECT_EQ(b[144], 0x40);      // brick 0 store uuid
  EXPECT_EQ(b[144 + 32], 0x50);  // brick 1 store uuid
  EXPECT_EQ(b[144 + 32 + 16 + 2], 0x40);  // brick 1 base 4 MiB = 0x400000
  uint32_t crc;
  std::memcpy(&crc, b.data() + 4092, 4);
  EXPECT_EQ(crc, crc32c(b.data(), 4092));
  EXPECT_EQ(b[136], 0);  // copies: 0 outside layout mirror
}

// Layout mirror: `copies` at offset 136, 2..3 and at most the brick count.
// A mirror's dirty bitmap fills the rest of the label block: a mirror with
// more blocks than it has bits - a size one 4 KiB page past the largest - is
// refused, by the label decoder and by Volume::Open alike (the block count
// rounded up: that page is a block of its own).
TEST(VolumeLabelCodec, AMirrorWithMoreBlocksThanItsBitmapHoldsIsRefused) {
  VolumeLabel l = sample();
  l.layout = Layout::kMirror;
  l.copies = 2;
  l.size = kMaxMirrorBlocks * proto::kBlockSize;
  ASSERT_TRUE(decode_label(encode_label(l)).ok());
  l.size += 4096;
  auto d = decode_label(encode_label(l));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().errnum(), EINVAL);
  VolumeOptions vo;
  vo.layout = Layout::kMirror;
  vo.copies = 2;
  vo.bricks.resize(2);
  vo.bricks[0].endpoint = Endpoint{"127.0.0.1", 1};
  vo.bricks[1].endpoint = Endpoint{"127.0.0.1", 2};
  vo.size = l.size;
  auto v = Volume::Open(vo);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().errnum(), EINVAL);
  EXPECT_NE(v.error().message().find("its dirty bitmap fills the label block"), std::string::npos)
      << v.error().message();
}

TEST(VolumeLabelCodec, MirrorKeepsItsCopies) {
  VolumeLabel l = sample();
  l.layout = Layout::kMirror;
  l.copies = 2;
  auto b = encode_label(l);
  EXPECT_EQ(b[40], 2);   // layout mirror
  EXPECT_EQ(b[136], 2);  // copies
  auto d = decode_label(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->layout, Layout::kMirror);
  EXPECT_EQ(d->copies, 2u);
  for (uint8_t bad : {0, 1, 4}) {
    auto c = b;
    c[136] = bad;
    reseal(c);
    auto r = decode_label(c);
    ASSERT_FALSE(r.ok()) << "copies " << int(bad);
    EXPECT_EQ(r.error().errnum(), EINVAL) << r.error().message();
  }
  // Three copies need three bricks.
  VolumeLabel two = sample(2);
  two.layout = Layout::kMirror;
  two.copies = 2;
  auto c = encode_label(two);
  c[136] = 3;
  reseal(c);
  EXPECT_EQ(decode_label(c).error().errnum(), EINVAL);
}

// Layout mirror: a stale brick's boot id (16 bytes per brick at 2192, after
// the brick table's 64 entries), kept only while the brick is stale.
TEST(VolumeLabelCodec, AStaleBrickKeepsTheBootIdItWentStaleIn) {
  VolumeLabel l = sample();
  l.layout = Layout::kMirror;
  l.copies = 2;
  l.bricks[1].stale_since = 1700000000;
  l.bricks[1].boot_id.fill(0x7c);
  auto b = encode_label(l);
  EXPECT_EQ(b[2192 + 16], 0x7c);
  EXPECT_EQ(b[2192 + 15], 0) << "brick 0's boot id: in sync, none";
  EXPECT_EQ(b[2192 + 32], 0) << "brick 2's";
  auto d = decode_label(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->bricks[1].boot_id, l.bricks[1].boot_id);
  EXPECT_EQ(d->bricks[0].boot_id, Uuid{});
  // A boot id beside an in-sync brick, or past the brick count, is damage.
  for (size_t at : {size_t{2192}, size_t{2192 + 3 * 16}}) {
    auto c = b;
    c[at] = 1;
    reseal(c);
    auto r = decode_label(c);
    ASSERT_FALSE(r.ok()) << at;
    EXPECT_EQ(r.error().errnum(), EBADMSG) << r.error().message();
  }
}

TEST(VolumeLabelCodec, RefusesDamageAndOutOfDomainFields) {
  auto good = encode_label(sample());
  struct Case {
    size_t offset;
    uint8_t value;
    int errnum;
    bool reseal;
  };
  const Case cases[] = {
      {0, 'X', EBADMSG, true},          // magic
      {8, 2, EBADMSG, true},            // version
      {10, 1, EBADMSG, true},           // reserved
      {12, 2, EINVAL, true},            // unknown flag
      {40, 2, EINVAL, true},            // layout
      {44, 3, EINVAL, true},            // index == count
      {48, 0, EINVAL, true},            // no bricks
      {48, 65, EINVAL, true},           // too many bricks
      {52, 64, EINVAL, true},           // name too long
      {57, '/', EINVAL, true},          // name character
      {70, 'x', EBADMSG, true},         // bytes after the name
      {121, 1, EINVAL, true},           // size not a multiple of 4096
      {136, 2, EINVAL, true},           // copies outside layout mirror
      {140, 1, EBADMSG, true},          // reserved
      {144 + 16, 1, EINVAL, true},      // brick base not 2 MiB aligned
      {144 + 24, 1, EBADMSG, true},     // brick entry reserved
      {144 + 3 * 32, 1, EBADMSG, true},  // after the brick table
      {2000, 1, EBADMSG, false},        // any flipped byte: the CRC
  };
  for (const Case& c : cases) {
    auto b = good;
    b[c.offset] = c.value;
    if (c.reseal) reseal(b);
    auto d = decode_label(b);
    ASSERT_FALSE(d.ok()) << "offset " << c.offset;
    EXPECT_EQ(d.error().errnum(), c.errnum) << "offset " << c.offset << ": " << d.error().message();
  }
  EXPECT_EQ(decode_label(std::span(good).first(100)).error().errnum(), EBADMSG);
  // Generation 0 and a single layout with several bricks are never written.
  auto b = good;
  std::memset(b.data() + 16, 0, 8);
  reseal(b);
  EXPECT_EQ(decode_label(b).error().errnum(), EINVAL);
  b = good;
  b[40] = 0;
  reseal(b);
  EXPECT_EQ(decode_label(b).error().errnum(), EINVAL);
  // A size near 2^64 (a multiple of 4096) is refused as such, before its
  // block count could wrap to 0 and pass the check against the label areas.
  b = good;
  const uint8_t huge[8] = {0x00, 0xF0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
  std::memcpy(b.data() + 120, huge, sizeof huge);
  reseal(b);
  auto d = decode_label(b);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().errnum(), EINVAL);
  EXPECT_NE(d.error().message().find("is beyond the label areas"), std::string::npos) << d.error().message();
}

TEST(VolumeLabelCodec, EveryBitFlipIsRefused) {
  auto good = encode_label(sample());
  for (size_t bit = 0; bit < kLabelSlotSize * 8; bit += 7) {
    auto b = good;
    b[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_FALSE(decode_label(b).ok()) << "bit " << bit;
  }
}

TEST(VolumeLabelSlots, NewestValidSlotWinsAndTornSlotsFallBack) {
  std::vector<uint8_t> block(kLabelReadSize, 0);
  auto r = read_label_slots(block);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->label);  // all zeros: no label
  VolumeLabel a = sample(), b = sample();
  b.generation = 8;
  b.size = 128 * kMiB;
  auto ab = encode_label(a), bb = encode_label(b);
  std::memcpy(block.data() + kLabelSlotSize, ab.data(), kLabelSlotSize);  // generation 7: slot B
  std::memcpy(block.data(), bb.data(), kLabelSlotSize);                   // generation 8: slot A
  r = read_label_slots(block);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->label->generation, 8u);
  EXPECT_FALSE(r->torn);
  block[100] ^= 1;  // generation 8 torn: 7 is used
  r = read_label_slots(block);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->label->generation, 7u);
  EXPECT_TRUE(r->torn);
  block[kLabelSlotSize + 100] ^= 1;  // both damaged: never "no label"
  r = read_label_slots(block);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().errnum(), EUCLEAN);
}

TEST(VolumeLabelHolder, RoundTripsAndRefusesDamage) {
  HolderRecord h{uuid_of(1), 4242, 1764676800, "host-a", "pbrick-gateway"};
  auto b = encode_holder(h);
  auto d = decode_holder(b);
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(d->to_string(), "pbrick-gateway pid 4242 on host-a since 2025-12-02T12:00:00Z");
  EXPECT_EQ(d->closed, 0u);
  // The clean detach's time, at offset 160, little-endian.
  h.closed = 0x0102030405060708ull;
  b = encode_holder(h);
  EXPECT_EQ(b[160], 0x08);
  EXPECT_EQ(b[167], 0x01);
  EXPECT_EQ(decode_holder(b)->closed, h.closed);
  EXPECT_EQ(b[168], 0);
  b[168] = 1;  // reserved after it
  reseal(b);
  EXPECT_EQ(decode_holder(b).error().errnum(), EBADMSG);
  h.closed = 0;
  b = encode_holder(h);
  std::memset(b.data() + 48, 'x', 64);  // host not terminated
  reseal(b);
  EXPECT_EQ(decode_holder(b).error().errnum(), EINVAL);
  b = encode_holder(h);
  b[48 + 10] = 'x';  // a byte after the terminator
  reseal(b);
  EXPECT_EQ(decode_holder(b).error().errnum(), EBADMSG);
  b = encode_holder(h);
  b[48] = 0x07;  // not printable
  reseal(b);
  EXPECT_EQ(decode_holder(b).error().errnum(), EINVAL);
  b = encode_holder(h);
  b[3000] = 1;
  EXPECT_EQ(decode_holder(b).error().errnum(), EBADMSG);
}

TEST(VolumeLabelArea, AboveEveryDataRangeAndDisjointPerBase) {
  EXPECT_EQ(*label_vaddr(0), 1ull << 63);
  EXPECT_EQ(*label_vaddr(2 * kMiB), (1ull << 63) + 4 * kMiB);
  EXPECT_EQ(lock_vaddr_of(*label_vaddr(0)), (1ull << 63) + 2 * kMiB);
  EXPECT_EQ(label_vaddr(kMaxLabelledBase + 2 * kMiB).error().errnum(), EINVAL);
  EXPECT_EQ(label_vaddr(4096).error().errnum(), EINVAL);
  EXPECT_EQ(lock_vaddr_of(*label_vaddr(kMaxLabelledBase)), UINT64_MAX - 2 * kMiB + 1);
}

// ---- plan_labels --------------------------------------------------------------

std::vector<BrickSeen> labelled(const VolumeLabel& l) {
  std::vector<BrickSeen> seen;
  for (size_t i = 0; i < l.bricks.size(); i++) {
    BrickSeen s;
    s.endpoint = "10.0.0." + std::to_string(i) + ":7000";
    s.store = l.bricks[i].store;
    s.base = l.bricks[i].base;
    VolumeLabel mine = l;
    mine.index = static_cast<uint32_t>(i);
    s.read.label = mine;
    seen.push_back(s);
  }
  return seen;
}

LabelRequest request_for(const VolumeLabel& l) { return {l.name, l.layout, l.size, false}; }

TEST(PlanLabels, FirstAttachCreatesTwoPhaseLabelsAndMatchingAttachWritesNothing) {
  VolumeLabel l = sample();
  auto seen = labelled(l);
  for (auto& s : seen) s.read.label.reset();
  auto p = plan_labels(seen, request_for(l), 99, uuid_of(0x77));
  ASSERT_TRUE(p.ok()) << p.error().message();
  EXPECT_EQ(p->action, LabelPlan::Action::kCreate);
  EXPECT_EQ(p->target.volume_uuid, uuid_of(0x77));
  EXPECT_EQ(p->target.generation, 2u);
  EXPECT_EQ(p->target.bricks, l.bricks);
  p = plan_labels(labelled(l), request_for(l), 99, uuid_of(0x77));
  ASSERT_TRUE(p.ok()) << p.error().message();
  EXPECT_EQ(p->action, LabelPlan::Action::kNone);
  EXPECT_EQ(p->target.volume_uuid, l.volume_uuid);
}

TEST(PlanLabels, UncommittedSetIsNoVolume) {
  VolumeLabel l = sample();
  l.flags = 0;
  auto seen = labelled(l);
  seen[2].read.label.reset();  // the first attach died in phase 1
  auto p = plan_labels(seen, request_for(l), 99, uuid_of(0x77));
  ASSERT_TRUE(p.ok()) << p.error().message();
  EXPECT_EQ(p->action, LabelPlan::Action::kCreate);
  EXPECT_EQ(p->target.generation, l.generation + 2);
  LabelRequest ro = request_for(l);
  ro.read_only = true;
  EXPECT_EQ(plan_labels(seen, ro, 99, uuid_of(0x77)).error().errnum(), EROFS);
}

TEST(PlanLabels, InterruptedCommitIsFinished) {
  VolumeLabel l = sample();
  auto seen = labelled(l);
  seen[1].read.label->flags = 0;
  seen[1].read.label->generation = l.generation - 1;
  auto p = plan_labels(seen, request_for(l), 99, uuid_of(0x77));
  ASSERT_TRUE(p.ok()) << p.error().message();
  EXPECT_EQ(p->action, LabelPlan::Action::kUpdate);
  EXPECT_EQ(p->target.generation, l.generation + 1);
  EXPECT_TRUE(p->target.committed());
}

TEST(PlanLabels, GrowIsAcceptedShrinkRefused) {
  VolumeLabel l = sample();
  LabelRequest r = request_for(l);
  r.size = l.size + 2 * kMiB;
  auto p = plan_labels(labelled(l), r, 99, uuid_of(0x77));
  ASSERT_TRUE(p.ok()) << p.error().message();
  EXPECT_EQ(p->action, LabelPlan::Action::kUpdate);
  EXPECT_EQ(p->target.size, r.size);
  EXPECT_EQ(p->target.generation, 8u);
  r.read_only = true;
  EXPECT_EQ(plan_labels(labelled(l), r, 99, uuid_of(0x77)).error().errnum(), EROFS);
  r = request_for(l);
  r.size = l.size - 4096;
  auto s = plan_labels(labelled(l), r, 99, uuid_of(0x77));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errnum(), EINVAL);
  EXPECT_NE(s.error().context().find("shrinking volume"), std::string::npos) << s.error().context();
  // An interrupted grow: brick 0 has the new size, the rest the old one.
  auto seen = labelled(l);
  seen[0].read.label->size = l.size + 2 * kMiB;
  seen[0].read.label->generation = 8;
  s = plan_labels(seen, request_for(l), 99, uuid_of(0x77));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().context().find("was interrupted"), std::string::npos) << s.error().context();
}

TEST(PlanLabels, WrongOrderNamesTheBrickAndItsPlace) {
  VolumeLabel l = sample();
  auto seen = labelled(l);
  std::swap(seen[0], seen[1]);
  std::swap(seen[0].base, seen[1].base);
  auto p = plan_labels(seen, request_for(l), 99, uuid_of(0x77));
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().errnum(), kErrWrongStore);
  EXPECT_NE(p.error().context().find("brick 0 (10.0.0.1:7000) is brick 1 of volume"), std::string::npos)
      << p.error().context();
  EXPECT_NE(p.error().context().find("wrong brick order"), std::string::npos);
}

TEST(PlanLabels, ReformattedBrickIsRefused) {
  VolumeLabel l = sample();
  auto seen = labelled(l);
  seen[2].store = uuid_of(0xee);  // new store, label gone
  seen[2].read.label.reset();
  auto p = plan_labels(seen, request_for(l), 99, uuid_of(0x77));
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().errnum(), kErrWrongStore);
  EXPECT_NE(p.error().context().find("brick 2 (10.0.0.2:7000) serves store"), std::string::npos)
      << p.error().context();
  EXPECT_NE(p.error().context().find("reformatted"), std::string::npos);
  // Same store, label lost.
  seen = labelled(l);
  seen[1].read.label.reset();
  p = plan_labels(seen, request_for(l), 99, uuid_of(0x77));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().context().find("brick 1 (10.0.0.1:7000) holds no label"), std::string::npos)
      << p.error().context();
}

TEST(PlanLabels, AnotherVolumesLabelAndMismatchesAreRefused) {
  VolumeLabel l = sample();
  auto seen = labelled(l);
  seen[1].read.label->volume_uuid = uuid_of(0x99);
  auto p = plan_labels(seen, request_for(l), 99, uuid_of(0x77));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().context().find("holds the label of another volume"), std::string::npos)
      << p.error().context();
  LabelRequest r = request_for(l);
  r.name = "other";
  EXPECT_EQ(plan_labels(labelled(l), r, 99, uuid_of(0x77)).error().errnum(), EINVAL);
  r = request_for(l);
  r.layout = Layout::kSingle;
  EXPECT_EQ(plan_labels(labelled(l), r, 99, uuid_of(0x77)).error().errnum(), EINVAL);  // single with 3 bricks
  auto two = labelled(l);
  two.pop_back();
  EXPECT_EQ(plan_labels(two, request_for(l), 99, uuid_of(0x77)).error().errnum(), EINVAL);
}

// ---- The claim against real bricks ---------------------------------------------

class VolumeClaimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("label"));
    PBRICK_ASSERT_OK(start_test_bricks(dir_.path(), 3, &bricks_));
  }
  void TearDown() override {
    for (auto& b : bricks_) b.reset();
  }
  struct Attachment {
    std::vector<std::unique_ptr<BrickClient>> clients;
    std::vector<ClaimBrick> claim;
  };
  Result<Attachment> connect(std::initializer_list<int> order, uint64_t base = 0) {
    Attachment a;
    for (int i : order) {
      auto c = BrickClient::Connect(bricks_[i]->client());
      if (!c) return c.error();
      a.claim.push_back({c->get(), "brick-" + std::to_string(i), base});
      a.clients.push_back(std::move(*c));
    }
    return a;
  }
  // A volume of 4 MiB (two blocks) on brick 0 alone.
  VolumeOptions small_volume() const {
    VolumeOptions vo;
    vo.brick = bricks_[0]->client();
    vo.size = 4 * kMiB;
    vo.io_timeout_ms = 2000;
    return vo;
  }
  TestDir dir_;  // before the bricks: removed after they stop
  std::vector<std::unique_ptr<TestBrick>> bricks_;
};

LabelRequest stripe(uint64_t size) { return {"vol", Layout::kStripe, size, false}; }

TEST_F(VolumeClaimTest, SecondWriterGetsEbusyNamingTheHolderUntilTheHolderIsGone) {
  auto a = connect({0, 1, 2});
  PBRICK_ASSERT_OK(a);
  auto first = VolumeClaim::Acquire(a->claim, stripe(12 * kMiB));
  PBRICK_ASSERT_OK(first);
  EXPECT_EQ(first->label().bricks.size(), 3u);
  auto b = connect({0, 1, 2});
  PBRICK_ASSERT_OK(b);
  auto second = VolumeClaim::Acquire(b->claim, stripe(12 * kMiB));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().errnum(), EBUSY);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  EXPECT_NE(second.error().context().find("is held by " + std::string(program_invocation_short_name) + " pid " +
                                          std::to_string(getpid()) + " on " + host),
            std::string::npos)
      << second.error().context();
  // A reader shares.
  LabelRequest ro = stripe(12 * kMiB);
  ro.read_only = true;
  auto c = connect({0, 1, 2});
  PBRICK_ASSERT_OK(c);
  auto reader = VolumeClaim::Acquire(c->claim, ro);
  PBRICK_ASSERT_OK(reader);
  EXPECT_EQ(reader->label().volume_uuid, first->label().volume_uuid);
  // The holder's connections die: the volume is free.
  a->clients.clear();
  auto third = VolumeClaim::Acquire(b->claim, stripe(12 * kMiB));
  PBRICK_ASSERT_OK(third);
  EXPECT_EQ(third->label().volume_uuid, first->label().volume_uuid);
  EXPECT_EQ(third->label().generation, first->label().generation);
}

// A holder of this host that has exited (a gateway killed a moment before
// its recover) keeps the lock only until the brick has seen its connections
// close, which can take longer than the short retry: the claim waits for it.
// Here the connections stay open in this process until a thread drops them.
TEST_F(VolumeClaimTest, AHolderOfThisHostThatHasExitedIsWaitedForUntilTheBrickDropsIt) {
  auto dying = connect({0, 1, 2});
  PBRICK_ASSERT_OK(dying);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto held = VolumeClaim::Acquire(dying->claim, stripe(12 * kMiB));
    ::_exit(held.ok() ? 0 : 1);  // the record names this pid; the connections stay open in the parent
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  auto b = connect({0, 1, 2});
  PBRICK_ASSERT_OK(b);
  std::thread dropper([&] {
    std::this_thread::sleep_for(std::chrono::seconds(3));
    dying->clients.clear();
  });
  auto started = std::chrono::steady_clock::now();
  auto second = VolumeClaim::Acquire(b->claim, stripe(12 * kMiB));
  auto waited = std::chrono::steady_clock::now() - started;
  dropper.join();
  PBRICK_ASSERT_OK(second);
  EXPECT_GE(waited, std::chrono::milliseconds(2500)) << "taken before the holder's connections were dropped";
}

// A recover names the volume its device was attached to: another volume at
// the same base (the first deleted, another made there) or none at all is
// refused, and nothing is written.
TEST_F(VolumeClaimTest, ANamedVolumeIsOpenedOnlyIfItIsTheOneAtTheBase) {
  Uuid first_uuid{};
  {
    auto a = connect({0, 1, 2});
    PBRICK_ASSERT_OK(a);
    auto first = VolumeClaim::Acquire(a->claim, stripe(12 * kMiB));
    PBRICK_ASSERT_OK(first);
    first_uuid = first->label().volume_uuid;
  }
  auto b = connect({0, 1, 2});
  PBRICK_ASSERT_OK(b);
  LabelRequest other = stripe(12 * kMiB);
  other.volume_uuid = uuid_of(0x42);
  auto refused = VolumeClaim::Acquire(b->claim, other);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().errnum(), kErrWrongStore);
  EXPECT_NE(refused.error().context().find("is of volume " + format_uuid(first_uuid) + " 'vol', not of volume " +
                                           format_uuid(uuid_of(0x42)) + ": another volume took its place"),
            std::string::npos)
      << refused.error().context();
  LabelRequest same = stripe(12 * kMiB);
  same.volume_uuid = first_uuid;
  {
    auto opened = VolumeClaim::Acquire(b->claim, same);
    PBRICK_ASSERT_OK(opened);
    EXPECT_EQ(opened->label().volume_uuid, first_uuid);
  }
  // Where no volume is, none is made.
  auto empty = connect({0, 1, 2}, 64 * kMiB);
  PBRICK_ASSERT_OK(empty);
  auto none = VolumeClaim::Acquire(empty->claim, same);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().errnum(), kErrWrongStore);
  EXPECT_NE(none.error().context().find("no label at base 0x4000000: volume " + format_uuid(first_uuid) +
                                        " is not there"),
            std::string::npos)
      << none.error().context();
  LabelRequest look = stripe(12 * kMiB);
  look.read_only = true;
  auto still_none = VolumeClaim::Acquire(empty->claim, look);
  ASSERT_FALSE(still_none.ok());
  EXPECT_EQ(still_none.error().errnum(), EROFS) << still_none.error().message();
}

TEST_F(VolumeClaimTest, WrongOrderAndReformattedBrickChangeNothing) {
  {
    auto a = connect({0, 1, 2});
    PBRICK_ASSERT_OK(a);
    PBRICK_ASSERT_OK(VolumeClaim::Acquire(a->claim, stripe(12 * kMiB)));
  }
  // Every brick's extents and the crc of its label slots.
  auto before = [&] {
    std::vector<std::pair<std::vector<proto::Extent>, uint32_t>> out;
    for (auto& b : bricks_) {
      auto c = BrickClient::Connect(b->client());
      EXPECT_TRUE(c.ok());
      if (!c) return out;
      uint32_t crc = 0;
      if (auto m = (*c)->map(*label_vaddr(0), proto::kMapShared)) {
        std::vector<uint8_t> bytes(2 * kLabelSlotSize);
        EXPECT_TRUE((*c)->read(m->rkey, m->remote_addr, bytes).ok());
        crc = crc32c(bytes.data(), bytes.size());
      }
      out.emplace_back((*c)->list_all().value(), crc);
    }
    return out;
  };
  auto extents = before();
  auto a = connect({1, 0, 2});
  PBRICK_ASSERT_OK(a);
  auto r = VolumeClaim::Acquire(a->claim, stripe(12 * kMiB));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().errnum(), kErrWrongStore);
  EXPECT_NE(r.error().context().find("brick 0 (brick-1) is brick 1 of volume"), std::string::npos)
      << r.error().context();
  a->clients.clear();
  bricks_[2]->stop();
  PBRICK_ASSERT_OK(bricks_[2]->start("reformatted.store"));
  a = connect({0, 1, 2});
  PBRICK_ASSERT_OK(a);
  r = VolumeClaim::Acquire(a->claim, stripe(12 * kMiB));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().context().find("brick 2 (brick-2) serves store"), std::string::npos) << r.error().context();
  a->clients.clear();
  auto after = before();
  ASSERT_EQ(after.size(), 3u);
  EXPECT_NE(extents[0].second, 0u);
  EXPECT_EQ(after[0], extents[0]);
  EXPECT_EQ(after[1], extents[1]);
  EXPECT_TRUE(after[2].first.empty());  // nothing allocated on the new store
}

TEST_F(VolumeClaimTest, GrowUpdatesEveryBrickAndReacquireChecksTheLabel) {
  auto a = connect({0, 1});
  PBRICK_ASSERT_OK(a);
  auto first = VolumeClaim::Acquire(a->claim, stripe(8 * kMiB));
  PBRICK_ASSERT_OK(first);
  a->clients.clear();
  a = connect({0, 1});
  PBRICK_ASSERT_OK(a);
  auto grown = VolumeClaim::Acquire(a->claim, stripe(16 * kMiB));
  PBRICK_ASSERT_OK(grown);
  EXPECT_EQ(grown->label().generation, first->label().generation + 1);
  EXPECT_EQ(grown->label().size, 16 * kMiB);
  // The stale claim no longer matches the label on a reconnect.
  a->clients.clear();
  a = connect({0, 1});
  PBRICK_ASSERT_OK(a);
  Status st = first->reacquire(1, a->claim[1]);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), kErrWrongStore);
  PBRICK_ASSERT_OK(grown->reacquire(1, a->claim[1]));
  // While a connection of this process still holds the lock, a reconnect
  // waits (ETIMEDOUT: retried) rather than failing as if another writer had it.
  auto other = connect({0, 1});
  PBRICK_ASSERT_OK(other);
  st = grown->reacquire(1, other->claim[1]);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), ETIMEDOUT) << st.error().message();
  // A shrink is refused.
  auto b = connect({0, 1});
  PBRICK_ASSERT_OK(b);
  a->clients.clear();
  auto s = VolumeClaim::Acquire(b->claim, stripe(8 * kMiB));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errnum(), EINVAL);
}

// A brick that skipped generations (stale while its labels were written
// elsewhere) holds generation 5 in slot B and 4 in slot A; the next label it
// gets is generation 7. Written by parity it would overwrite 5 (a torn write
// then left the brick at 4): it goes to slot A, and B keeps 5.
TEST_F(VolumeClaimTest, ALabelNeverOverwritesTheBricksNewestOneEvenAfterSkippedGenerations) {
  auto a = connect({0, 1});
  PBRICK_ASSERT_OK(a);
  auto claim = VolumeClaim::Acquire(a->claim, stripe(8 * kMiB));
  PBRICK_ASSERT_OK(claim);
  VolumeLabel l = claim->label();
  l.index = 1;
  auto slots = [&]() -> std::pair<uint64_t, uint64_t> {
    auto admin = BrickClient::Connect(bricks_[1]->client());
    EXPECT_TRUE(admin.ok());
    if (!admin.ok()) return {0, 0};
    auto m = (*admin)->map(*label_vaddr(0), proto::kMapShared);
    EXPECT_TRUE(m.ok());
    if (!m.ok()) return {0, 0};
    std::vector<uint8_t> bytes(2 * kLabelSlotSize);
    EXPECT_TRUE((*admin)->read(m->rkey, m->remote_addr, bytes).ok());
    auto gen = [&](size_t slot) -> uint64_t {
      auto d = decode_label(std::span<const uint8_t>(bytes).subspan(slot * kLabelSlotSize, kLabelSlotSize));
      return d ? d->generation : 0;
    };
    return {gen(0), gen(1)};
  };
  {
    auto admin = BrickClient::Connect(bricks_[1]->client());
    PBRICK_ASSERT_OK(admin);
    auto m = (*admin)->map(*label_vaddr(0), proto::kMapShared | proto::kMapWrite);
    PBRICK_ASSERT_OK(m);
    l.generation = 4;
    PBRICK_ASSERT_OK((*admin)->write(m->rkey, m->remote_addr, encode_label(l)));
    l.generation = 5;
    PBRICK_ASSERT_OK((*admin)->write(m->rkey, m->remote_addr + kLabelSlotSize, encode_label(l)));
  }
  ASSERT_EQ(slots(), (std::pair<uint64_t, uint64_t>{4, 5}));
  l.generation = 7;
  PBRICK_ASSERT_OK(VolumeClaim::write_label_to(a->claim[1], 1, l));
  EXPECT_EQ(slots(), (std::pair<uint64_t, uint64_t>{7, 5}));
  l.generation = 9;
  PBRICK_ASSERT_OK(VolumeClaim::write_label_to(a->claim[1], 1, l));
  EXPECT_EQ(slots(), (std::pair<uint64_t, uint64_t>{7, 9}));
}

// Volume::Open claims the volume: a second read-write open is refused, a
// read-only one shares and cannot write.
// A label write that landed on a brick whose reply was lost (the connection
// died): the reconnect finds a generation the claim has not committed. It
// is this attachment's own, proposed before the write, so the brick is
// taken back (the writer writes the label again) rather than refused as if
// another attachment had written it; and that generation is never used for
// another label.
TEST_F(VolumeClaimTest, AReconnectTakesBackABrickHoldingALabelThisAttachmentProposed) {
  auto a = connect({0, 1});
  PBRICK_ASSERT_OK(a);
  auto claim = VolumeClaim::Acquire(a->claim, stripe(8 * kMiB));
  PBRICK_ASSERT_OK(claim);
  const uint64_t committed = claim->label().generation;
  VolumeLabel next = claim->label();
  next.generation = claim->next_generation();
  EXPECT_EQ(next.generation, committed + 1);
  claim->propose(next);
  PBRICK_ASSERT_OK(VolumeClaim::write_label_to(a->claim[1], 1, next));  // landed; its reply "lost"

  a->clients.clear();  // the connections die
  a = connect({0, 1});
  PBRICK_ASSERT_OK(a);
  PBRICK_ASSERT_OK(claim->reacquire(1, a->claim[1]));
  PBRICK_ASSERT_OK(claim->reacquire(0, a->claim[0]));  // brick 0 still holds the committed one
  EXPECT_EQ(claim->next_generation(), committed + 2) << "the proposed generation is not used again";

  // A generation beyond anything proposed is someone else's.
  VolumeLabel foreign = next;
  foreign.generation = committed + 5;
  PBRICK_ASSERT_OK(VolumeClaim::write_label_to(a->claim[1], 1, foreign));
  a->clients.clear();
  a = connect({0, 1});
  PBRICK_ASSERT_OK(a);
  Status st = claim->reacquire(1, a->claim[1]);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), kErrWrongStore) << st.error().message();
}

TEST_F(VolumeClaimTest, VolumeOpenHoldsTheVolume) {
  VolumeOptions vo = small_volume();
  auto v1 = Volume::Open(vo);
  PBRICK_ASSERT_OK(v1);
  auto v2 = Volume::Open(vo);
  ASSERT_FALSE(v2.ok());
  EXPECT_EQ(v2.error().errnum(), EBUSY);
  vo.read_only = true;
  auto ro = Volume::Open(vo);
  PBRICK_ASSERT_OK(ro);
  auto w = (*ro)->map_block(0, true);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().errnum(), EROFS);
  v1->reset();
  vo.read_only = false;
  PBRICK_ASSERT_OK(Volume::Open(vo));
}


// FENCE's last sender wins at the brick (docs/protocol.md §7.9), so a writer
// that lost the volume's lock must send none: after a brick restart another
// attachment took the lock before this one's control connection came back;
// from then on this one's data channels do not connect to that brick, and the
// new writer's connections stay up.
TEST_F(VolumeClaimTest, AWriterThatLostTheLockSendsNoFenceToCutTheNewWritersConnectionsOff) {
  VolumeOptions vo = small_volume();
  auto old_writer = Volume::Open(vo);
  PBRICK_ASSERT_OK(old_writer);
  bricks_[0]->stop();  // the old writer's control connection (and lock) die with it
  PBRICK_ASSERT_OK(bricks_[0]->start());
  auto new_writer = Volume::Open(vo);
  PBRICK_ASSERT_OK(new_writer);
  // Its holder record names another process, as a writer on another host's
  // would (both attachments live in this test's process).
  auto admin = BrickClient::Connect(bricks_[0]->client());
  PBRICK_ASSERT_OK(admin);
  auto label = label_vaddr(0);
  PBRICK_ASSERT_OK(label);
  auto lm = (*admin)->map(*label, proto::kMapWrite | proto::kMapShared);
  PBRICK_ASSERT_OK(lm);
  HolderRecord elsewhere;
  elsewhere.pid = 1;
  elsewhere.host = "host-b";
  elsewhere.program = "pbrick-gateway";
  auto record = encode_holder(elsewhere);
  PBRICK_ASSERT_OK((*admin)->write(lm->rkey, lm->remote_addr + kHolderOffset, record));
  auto data = BrickClient::Connect((*new_writer)->writer_options(0, (*new_writer)->new_channel_id()));
  PBRICK_ASSERT_OK(data);
  ASSERT_TRUE((*data)->fenced());

  auto m = (*old_writer)->map_block(0, true);  // reconnects its control connection: the lock is taken
  ASSERT_FALSE(m.ok());
  auto channel = DataChannel::Create(Transport::kTcp, 4);
  Status st = (*old_writer)->connect_channel(*channel, 0, (*old_writer)->new_channel_id());
  ASSERT_FALSE(st.ok()) << "the writer that lost the lock connected a data channel";
  EXPECT_EQ(st.error().errnum(), EBUSY) << st.error().message();
  EXPECT_TRUE((*data)->stat().ok()) << "the new writer's connection was cut off";
}

// A writer whose control connection was down while another read-write
// attachment held the volume (a brick restart dropped its lock; the other
// attached, wrote, went away) does not take the volume back when the lock is
// free again: the label is unchanged, but the other's writes are not in its
// caches and allocation map. The holder record names the attachment - here
// both live in this test's process, so pid, host and program are the same.
TEST_F(VolumeClaimTest, AWriterDoesNotTakeBackAVolumeAnotherAttachmentHeldMeanwhile) {
  VolumeOptions vo = small_volume();
  auto old_writer = Volume::Open(vo);
  PBRICK_ASSERT_OK(old_writer);
  bricks_[0]->stop();  // the old writer's control connection (and lock) die with it
  PBRICK_ASSERT_OK(bricks_[0]->start());
  {
    auto other = Volume::Open(vo);
    PBRICK_ASSERT_OK(other);
    PBRICK_ASSERT_OK((*other)->map_block(0, true));  // writes, then detaches
  }
  auto m = (*old_writer)->map_block(1, true);
  ASSERT_FALSE(m.ok()) << "the old writer took the volume back";
  EXPECT_NE(m.error().message().find("while this attachment's connection there was down"), std::string::npos)
      << m.error().message();
  auto channel = DataChannel::Create(Transport::kTcp, 4);
  Status st = (*old_writer)->connect_channel(*channel, 0, (*old_writer)->new_channel_id());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EBUSY) << st.error().message();
  // A writer whose own lock was dropped, with nobody in between, takes it back.
  old_writer->reset();
  auto writer = Volume::Open(vo);
  PBRICK_ASSERT_OK(writer);
  bricks_[0]->stop();
  PBRICK_ASSERT_OK(bricks_[0]->start());
  PBRICK_ASSERT_OK((*writer)->map_block(1, true));
}

// Layout mirror: the label of the highest generation decides which copies are
// current (and keeps them so through the rewrite); labels that cannot be
// ordered - the same generation with different stale copies, or a stale brick
// that marked an in-sync one stale - are refused naming both bricks.
TEST(VolumeLabelPlan, MirrorGenerationsOrderTheCopies) {
  VolumeLabel l = sample(2);
  l.layout = Layout::kMirror;
  l.copies = 2;
  auto seen_of = [&](const VolumeLabel& a, const VolumeLabel& b) {
    std::vector<BrickSeen> seen(2);
    for (size_t i = 0; i < 2; i++) {
      seen[i].endpoint = "h" + std::to_string(i) + ":7000";
      seen[i].store = l.bricks[i].store;
      seen[i].base = l.bricks[i].base;
      seen[i].read.label = i == 0 ? a : b;
      seen[i].read.label->index = static_cast<uint32_t>(i);
    }
    return seen;
  };
  LabelRequest req{l.name, Layout::kMirror, l.size, false, 2};
  // Brick 1 went stale at generation 8; its own label is still at 7.
  VolumeLabel newer = l;
  newer.generation = 8;
  newer.bricks[1].stale_since = 1700000100;
  auto plan = plan_labels(seen_of(newer, l), req, 99, uuid_of(0x77));
  ASSERT_TRUE(plan.ok()) << plan.error().message();
  EXPECT_EQ(plan->action, LabelPlan::Action::kUpdate);
  EXPECT_EQ(plan->target.generation, 9u);
  EXPECT_EQ(plan->target.bricks[1].stale_since, 1700000100u) << "stays stale through the rewrite";
  EXPECT_EQ(plan->target.bricks[0].stale_since, 0u);
  // Each half marked the other stale at the same generation.
  VolumeLabel other = l;
  other.generation = 8;
  other.bricks[0].stale_since = 1700000200;
  plan = plan_labels(seen_of(newer, other), req, 99, uuid_of(0x77));
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().errnum(), EUCLEAN);
  EXPECT_NE(plan.error().message().find("cannot be ordered"), std::string::npos) << plan.error().message();
  EXPECT_NE(plan.error().message().find("h0:7000"), std::string::npos) << plan.error().message();
  EXPECT_NE(plan.error().message().find("h1:7000"), std::string::npos) << plan.error().message();
  // Brick 1, stale by brick 0's generation 9, marked brick 0 stale at 8.
  newer.generation = 9;
  plan = plan_labels(seen_of(newer, other), req, 99, uuid_of(0x77));
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().errnum(), EUCLEAN) << plan.error().message();
}

}  // namespace
}  // namespace pbrick
