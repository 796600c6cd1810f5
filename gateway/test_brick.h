// For the gateway's tests: a real brick (Store + Server on a file store in a
// directory of the test) served from a thread of the test over TCP on
// loopback, which can be stopped and started again on the same port - on the
// same store, or on another one (a replaced brick).
//
// Errors come back as Status/Result: a test ASSERTs on them, so a failed
// precondition stops it.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>

#include "common/client.h"
#include "common/result.h"
#include "target/pmem_region.h"
#include "target/server.h"
#include "target/store.h"

namespace pbrick {

// Stops the test (from the test body, not a helper) when `expr`, a Status or
// Result, is an error, naming it.
#define PBRICK_ASSERT_OK(expr)                                  \
  do {                                                          \
    const auto& pbrick_assert_ok_ = (expr);                     \
    ASSERT_TRUE(pbrick_assert_ok_.ok()) << pbrick_assert_ok_.error().message(); \
  } while (0)

class TestBrick {
 public:
  static constexpr uint64_t kStoreSize = 128ull << 20;

  explicit TestBrick(std::string dir) : dir_(std::move(dir)) {}
  ~TestBrick() { stop(); }
  TestBrick(const TestBrick&) = delete;
  TestBrick& operator=(const TestBrick&) = delete;

  // Serves the store in file `store_name` of the directory (formatted when it
  // does not exist yet), on the port of the previous start if there was one.
  // `boot_id`: the one HELLO reports (another one stands in for a reboot of
  // the brick's host); unset: the host's.
  Status start(const std::string& store_name = "brick.store",
               std::optional<std::array<uint8_t, proto::kUuidSize>> boot_id = std::nullopt) {
    RegionOptions ro;
    ro.path = dir_ + "/" + store_name;
    ro.size = kStoreSize;
    auto region = open_pmem_region(ro);
    if (!region) return region.error().wrap("test brick: " + ro.path);
    auto store = Store::Open(std::move(*region), {});
    if (!store) return store.error().wrap("test brick: " + ro.path);
    ServerOptions so;
    so.listen = Endpoint{"127.0.0.1", port_};
    so.boot_id = boot_id;
    auto server = Server::Create(**store, so);
    if (!server) return server.error().wrap("test brick: listen");
    store_ = std::move(*store);
    server_ = std::move(*server);
    port_ = server_->port();
    thread_ = std::thread([this] {
      Status st = server_->run();
      EXPECT_TRUE(st.ok()) << st.error().message();
    });
    return Status::Ok();
  }

  void stop() {
    if (!thread_.joinable()) return;
    server_->stop();
    thread_.join();
    server_.reset();
    store_.reset();
  }

  ClientOptions client() const {
    ClientOptions o;
    o.endpoint = Endpoint{"127.0.0.1", port_};
    return o;
  }

  Result<proto::StatReply> stat() const {
    auto c = BrickClient::Connect(client());
    if (!c) return c.error();
    return (*c)->stat();
  }

 private:
  std::string dir_;
  uint16_t port_ = 0;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

}  // namespace pbrick
