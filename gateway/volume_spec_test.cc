// VolumeSpec: what the user gave wins over the cluster file, the file fills
// the rest, then defaults.
#include "gateway/volume_spec.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "gateway/test_brick.h"

namespace pbrick {
namespace {

constexpr char kCluster[] = R"(cluster:
  name: demo
bricks:
  - name: brick0
    host: 127.0.0.1
    port: 7000
    store: {path: /var/lib/pbrick/b0.store, size: 1G}
volumes:
  - name: fast
    size: 64M
    brick: brick0
    base: 0x0
    frontend: ublk
    queues: 2
    poll_us: 300
    pin_queues: true
    chained_syncs: false
  - name: plain
    size: 64M
    brick: brick0
    base: 0x10000000
)";

class VolumeSpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PBRICK_ASSERT_OK(dir_.make("volume-spec"));
    path_ = dir_.path() + "/cluster.yaml";
    std::ofstream(path_) << kCluster;
  }

  TestDir dir_;
  std::string path_;
};

TEST_F(VolumeSpecTest, TheClusterFileGivesPollingPinningAndChaining) {
  VolumeSpec spec;
  PBRICK_ASSERT_OK(spec.complete_from_config(path_, "fast"));
  EXPECT_EQ(spec.targets_string(), "127.0.0.1:7000");
  EXPECT_EQ(spec.queues, 2u);
  EXPECT_EQ(spec.poll_us, 300u);
  EXPECT_EQ(spec.pin_queues, true);
  EXPECT_EQ(spec.chain_syncs, false);
}

TEST_F(VolumeSpecTest, AVolumeThatSaysNothingNeitherPollsNorPins) {
  VolumeSpec spec;
  PBRICK_ASSERT_OK(spec.complete_from_config(path_, "plain"));
  EXPECT_EQ(spec.poll_us.value_or(UINT32_MAX), 0u);
  EXPECT_EQ(spec.pin_queues.value_or(true), false);
  EXPECT_EQ(spec.chain_syncs.value_or(false), true);  // syncs are chained unless the file says not
}

TEST_F(VolumeSpecTest, WhatTheUserGaveWinsOverTheFile) {
  VolumeSpec spec;
  spec.poll_us = 0;  // --poll-us 0 on the command line
  spec.queues = 4;
  spec.chain_syncs = true;  // nbdkit chained-syncs=true
  PBRICK_ASSERT_OK(spec.complete_from_config(path_, "fast"));
  EXPECT_EQ(spec.poll_us, 0u);
  EXPECT_EQ(spec.queues, 4u);
  EXPECT_EQ(spec.chain_syncs, true);
  EXPECT_EQ(spec.pin_queues, true);  // not given: the file's
}

// A brick with `socket:` is reached on it, not on host:port.
TEST_F(VolumeSpecTest, ABrickOnAUnixSocketIsReachedThere) {
  std::string yaml = kCluster;
  const std::string port_line = "    port: 7000\n";
  yaml.replace(yaml.find(port_line), port_line.size(), port_line + "    socket: /run/pbrick/brick0.sock\n");
  std::ofstream(path_) << yaml;
  VolumeSpec spec;
  PBRICK_ASSERT_OK(spec.complete_from_config(path_, "plain"));
  EXPECT_EQ(spec.targets_string(), "unix:/run/pbrick/brick0.sock");
}

TEST_F(VolumeSpecTest, AnUnknownVolumeIsENOENT) {
  VolumeSpec spec;
  Status st = spec.complete_from_config(path_, "nope");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errnum(), ENOENT);
  EXPECT_NE(st.error().message().find("no volume named 'nope'"), std::string::npos) << st.error().message();
}

}  // namespace
}  // namespace pbrick
