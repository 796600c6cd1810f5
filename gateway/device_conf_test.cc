// device_conf: what attach saves, recover reads back - every setting, and
// a clear refusal of a file it cannot trust.
#include "gateway/device_conf.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "gateway/test_brick.h"

namespace pbrick {
namespace {

class DeviceConfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("device-conf"));
    path_ = dir_.path() + "/ublk-3.conf";
  }

  std::string read() const {
    std::ifstream in(path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // The saved file with the line of `key` replaced by `line`.
  void rewrite(const std::string& key, const std::string& line) {
    std::istringstream in(read());
    std::string out, l;
    while (std::getline(in, l)) out += (l.rfind(key + "=", 0) == 0 ? line : l) + "\n";
    std::ofstream(path_, std::ios::trunc) << out;
  }

  static AttachParams minimal() {
    AttachParams p;
    EXPECT_TRUE(p.add_targets("10.0.0.1:7000", "--target").ok());
    p.size = 64 << 20;
    p.base = 0;
    p.queues = 1;
    p.depth = 32;
    return p;
  }

  TestDir dir_;
  std::string path_;
};

// Every setting differs from its default, so a key one side forgets shows.
TEST_F(DeviceConfTest, EverySettingComesBackAsAttachGaveIt) {
  AttachParams p;
  PBRICK_ASSERT_OK(p.add_targets("10.0.0.1:7000,10.0.0.2:7001,[fd00::3]:7002", "--target"));
  p.layout = Layout::kMirror;
  p.copies = 3;
  p.size = 3ull << 30;
  p.base = 0x40000000;
  p.key_file = "/etc/pbrick/cluster.key";
  p.brick_key_files = {"/etc/pbrick/b0.key", "/etc/pbrick/b1.key", "/etc/pbrick/b2.key"};
  p.queues = 4;
  p.depth = 128;
  p.timeout_ms = 12000;
  p.leg_timeout_ms = 2500;
  p.resync_mib_per_s = 200;
  p.max_mapped = 1000;
  p.poll_us = 300;
  p.pin_queues = true;
  p.transport = Transport::kRdma;
  p.persistence = Persistence::kRpc;
  p.label_name = "vol0";
  p.read_only = true;
  p.degraded = true;
  p.chain_syncs = false;
  p.logical_block_size = 512;
  p.volume_uuid = Uuid{0xe2, 0xf4, 0x24, 0x59, 0x99, 0x2f, 0x43, 0x2b, 0xa5, 0x8a, 0x8e, 0x2f, 0x48, 0xbb, 0xc5, 0x71};
  PBRICK_ASSERT_OK(save_device_conf(path_, p));

  auto got = load_device_conf(path_);
  PBRICK_ASSERT_OK(got);
  EXPECT_EQ(got->targets_string(), p.targets_string());
  EXPECT_EQ(got->layout, Layout::kMirror);
  EXPECT_EQ(got->copies, 3u);
  EXPECT_EQ(got->size, p.size);
  EXPECT_EQ(got->base, 0x40000000u);
  EXPECT_EQ(got->key_file, p.key_file);
  EXPECT_EQ(got->brick_key_files, p.brick_key_files);
  EXPECT_EQ(got->queues, 4u);
  EXPECT_EQ(got->depth, 128u);
  EXPECT_EQ(got->timeout_ms, 12000u);
  EXPECT_EQ(got->leg_timeout_ms, 2500u);
  EXPECT_EQ(got->resync_mib_per_s, 200u);
  EXPECT_EQ(got->max_mapped, 1000u);
  EXPECT_EQ(got->poll_us, 300u);
  EXPECT_EQ(got->pin_queues, true);
  EXPECT_EQ(got->transport, Transport::kRdma);
  EXPECT_EQ(got->persistence, Persistence::kRpc);
  EXPECT_EQ(got->label_name, "vol0");
  EXPECT_TRUE(got->read_only);
  EXPECT_TRUE(got->degraded);
  EXPECT_EQ(got->chain_syncs, false) << "a device attached with --no-chained-syncs recovers without chaining";
  EXPECT_EQ(got->logical_block_size, 512u);
  EXPECT_EQ(got->volume_uuid, p.volume_uuid);
}

TEST_F(DeviceConfTest, WhatAttachLeftUnsetRecoversAsTheDefaults) {
  PBRICK_ASSERT_OK(save_device_conf(path_, minimal()));
  auto got = load_device_conf(path_);
  PBRICK_ASSERT_OK(got);
  EXPECT_EQ(got->layout, Layout::kSingle);
  EXPECT_EQ(got->transport, Transport::kTcp);
  EXPECT_FALSE(got->persistence.has_value()) << "the transport's default, chosen when the volume opens";
  EXPECT_FALSE(got->copies.has_value());
  EXPECT_FALSE(got->leg_timeout_ms.has_value());
  EXPECT_FALSE(got->max_mapped.has_value());
  EXPECT_EQ(got->poll_us.value_or(0), 0u);
  EXPECT_EQ(got->pin_queues, false);
  EXPECT_EQ(got->chain_syncs, true);
  EXPECT_FALSE(got->read_only);
  EXPECT_FALSE(got->degraded);
  EXPECT_TRUE(got->brick_key_files.empty());
  EXPECT_EQ(got->logical_block_size, 4096u);
  EXPECT_FALSE(got->volume_uuid.has_value()) << "a file from before the volume was kept: recover checks nothing";
}

// Brick key files by place: a brick without one (an empty entry) keeps the
// places of those after it; a path that the list cannot hold is refused.
TEST_F(DeviceConfTest, BrickKeyFilesKeepTheirPlaces) {
  AttachParams p = minimal();
  p.targets.clear();
  PBRICK_ASSERT_OK(p.add_targets("10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002", "--target"));
  p.brick_key_files = {"", "/etc/pbrick/b1.key", ""};
  PBRICK_ASSERT_OK(save_device_conf(path_, p));
  auto got = load_device_conf(path_);
  PBRICK_ASSERT_OK(got);
  EXPECT_EQ(got->brick_key_files, p.brick_key_files);
  p.brick_key_files = {"/etc/pbrick/a,b.key", "", ""};
  Status st = save_device_conf(path_, p);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), EINVAL);
  EXPECT_NE(st.error().message().find("a,b.key"), std::string::npos) << st.error().message();
}

TEST_F(DeviceConfTest, SavingReplacesTheFileWhole) {
  AttachParams p = minimal();
  p.chain_syncs = false;
  PBRICK_ASSERT_OK(save_device_conf(path_, p));
  PBRICK_ASSERT_OK(save_device_conf(path_, minimal()));
  EXPECT_EQ(read().find("chained_syncs"), std::string::npos) << read();
  EXPECT_NE(::access((path_ + ".tmp").c_str(), F_OK), 0) << "no temporary file is left behind";
}

TEST_F(DeviceConfTest, AMissingFileIsENOENTNamingIt) {
  auto got = load_device_conf(path_);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().errnum(), ENOENT);
  EXPECT_NE(got.error().message().find(path_), std::string::npos) << got.error().message();
}

TEST_F(DeviceConfTest, AValueThatDoesNotParseIsRefusedNamingFileAndKey) {
  struct Case {
    const char* key;
    const char* line;
  };
  for (const Case& c : {Case{"size", "size=lots"}, Case{"queues", "queues=4294967296"},
                        Case{"chained_syncs", "chained_syncs=no"}, Case{"read_only", "read_only=yes"},
                        Case{"poll_us", "poll_us=1001"}, Case{"transport", "transport=carrier-pigeon"},
                        Case{"target", "target=nohost"},
                        Case{"volume", "volume=e2f42459-992f-432b-a58a-8e2f48bbc57"},
                        Case{"volume", "volume=e2f42459+992f-432b-a58a-8e2f48bbc571"},
                        Case{"volume", "volume=e2f42459-992f-432b-a58a-8e2f48bbc57x"}}) {
    AttachParams p = minimal();
    p.chain_syncs = false;  // so that the line is there to rewrite
    p.poll_us = 5;
    p.volume_uuid = Uuid{};
    PBRICK_ASSERT_OK(save_device_conf(path_, p));
    rewrite(c.key, c.line);
    auto got = load_device_conf(path_);
    ASSERT_FALSE(got.ok()) << c.line;
    EXPECT_EQ(got.error().errnum(), EINVAL) << c.line;
    EXPECT_NE(got.error().message().find(path_ + ": " + c.key), std::string::npos)
        << c.line << " -> " << got.error().message();
  }
}

TEST_F(DeviceConfTest, SavingWhereNoFileCanBeWrittenFailsNamingIt) {
  std::string where = dir_.path() + "/no-such-dir/ublk-0.conf";
  Status st = save_device_conf(where, minimal());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), ENOENT);
  EXPECT_NE(st.error().message().find(where), std::string::npos) << st.error().message();
}

// A write that fails (here: the temporary file is /dev/full, so the flush at
// close gets ENOSPC) leaves the saved file as it was and no temporary behind.
TEST_F(DeviceConfTest, AFailedWriteKeepsTheOldFileAndSaysWhy) {
  AttachParams before = minimal();
  before.chain_syncs = false;
  PBRICK_ASSERT_OK(save_device_conf(path_, before));
  ASSERT_EQ(::symlink("/dev/full", (path_ + ".tmp").c_str()), 0);
  Status st = save_device_conf(path_, minimal());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), ENOSPC) << st.error().message();
  EXPECT_NE(st.error().message().find(path_), std::string::npos) << st.error().message();
  struct stat sb;
  EXPECT_NE(::lstat((path_ + ".tmp").c_str(), &sb), 0) << "the temporary file is removed";
  auto got = load_device_conf(path_);
  PBRICK_ASSERT_OK(got);
  EXPECT_EQ(got->chain_syncs, false) << "the file attach saved before is intact";
}

}  // namespace
}  // namespace pbrick
