#include "config/cluster_config.h"

#include <dirent.h>
#include <gtest/gtest.h>

#include <tuple>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/units.h"

namespace pbrick {
namespace {

const std::string kSourceDir = PBRICK_SOURCE_DIR;

// A small valid cluster that each test breaks in one place.
constexpr char kValid[] = R"(cluster:
  name: demo
bricks:
  - name: brick0
    host: 127.0.0.1
    store: {path: /var/lib/pbrick/b0.store, size: 1G}
volumes:
  - name: vol0
    size: 1G
    brick: brick0
    base: 0x0
gateways:
  - name: client0
    host: 127.0.0.1
    volumes: [vol0]
)";

std::vector<ConfigError> check(const std::string& yaml, ClusterConfig* out = nullptr) {
  ConfigParseResult r = check_cluster_config(yaml, "test.yaml");
  if (out) *out = r.config;
  return r.errors;
}

std::string dump(const std::vector<ConfigError>& errors) {
  std::string out;
  for (const ConfigError& e : errors) out += "  " + e.to_string() + "\n";
  return out;
}

// Exactly one error, at line:col, whose text contains `needle`.
void expect_one(const std::string& yaml, int line, int col, const std::string& needle) {
  auto errors = check(yaml);
  ASSERT_EQ(errors.size(), 1u) << "errors:\n" << dump(errors);
  EXPECT_EQ(errors[0].pos.line, line) << errors[0].to_string();
  EXPECT_EQ(errors[0].pos.column, col) << errors[0].to_string();
  EXPECT_NE(errors[0].to_string().find(needle), std::string::npos)
      << "'" << needle << "' not in: " << errors[0].to_string();
}

// kValid with one substring replaced.
std::string valid_with(const std::string& from, const std::string& to) {
  std::string s = kValid;
  size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/pbrick-config-test.XXXXXX";
    char* d = mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    path_ = d ? d : "/tmp";
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string write(const std::string& name, const std::string& text) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ClusterConfigTest, ValidBaseConfigHasNoErrors) { EXPECT_TRUE(check(kValid).empty()) << dump(check(kValid)); }

// ---- shipped examples ----

TEST(ClusterConfigTest, SingleNodeExampleLoads) {
  unsetenv("PBRICK_STATE_DIR");
  auto c = load_cluster_config(kSourceDir + "/config/examples/single-node-tcp.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message();
  EXPECT_EQ(c->cluster.name, "demo");
  ASSERT_EQ(c->bricks.size(), 1u);
  const BrickConfig& b = c->bricks[0];
  EXPECT_EQ(b.name, "brick0");
  EXPECT_EQ(b.host, "127.0.0.1");
  EXPECT_EQ(b.port, 7100u);
  EXPECT_EQ(b.transport, Transport::kTcp);
  EXPECT_EQ(b.persistence, Persistence::kRpc);
  EXPECT_EQ(b.nic.ddio, DdioMode::kUnmanaged);
  EXPECT_EQ(b.store.path.rfind("/var/lib/pbrick/", 0), 0u) << b.store.path;
  EXPECT_TRUE(b.key_file.empty());
  ASSERT_EQ(c->volumes.size(), 1u);
  const VolumeConfig& v = c->volumes[0];
  EXPECT_EQ(v.size, 1ull << 30);
  EXPECT_EQ(v.frontend, Frontend::kNbd);
  EXPECT_EQ(v.base, 0u);
  EXPECT_EQ(c->find_brick(v.brick), &c->bricks[0]);
  ASSERT_EQ(c->gateways.size(), 1u);
  EXPECT_EQ(c->gateways[0].volumes, std::vector<std::string>{"vol0"});
}

TEST(ClusterConfigTest, EnvironmentVariablesExpandInValues) {
  setenv("PBRICK_TEST_DIR", "/srv/pbrick", 1);
  unsetenv("PBRICK_TEST_UNSET");
  auto c = load_cluster_config(kSourceDir + "/config/examples/single-node-tcp.yaml");
  ASSERT_TRUE(c.ok());
  setenv("PBRICK_STATE_DIR", "/srv/state", 1);
  c = load_cluster_config(kSourceDir + "/config/examples/single-node-tcp.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message();
  EXPECT_EQ(c->bricks[0].store.path, "/srv/state/brick0.store");
  unsetenv("PBRICK_STATE_DIR");

  auto ok = check(valid_with("size: 1G", "size: \"${PBRICK_TEST_UNSET:-2}G\""));
  EXPECT_TRUE(ok.empty()) << dump(ok);
  auto errors = check(valid_with("size: 1G", "size: \"${PBRICK_TEST_UNSET}G\""));
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_NE(errors[0].message.find("environment variable PBRICK_TEST_UNSET is not set"), std::string::npos);
  EXPECT_GT(errors[0].pos.line, 0);
  // A default may name another variable, with a default of its own.
  setenv("PBRICK_TEST_SIZE", "3", 1);
  ClusterConfig nested;
  ok = check(valid_with("size: 1G", "size: \"${PBRICK_TEST_UNSET:-${PBRICK_TEST_SIZE:-2}}G\""), &nested);
  ASSERT_TRUE(ok.empty()) << dump(ok);
  EXPECT_EQ(nested.bricks[0].store.size, 3ull << 30);
  unsetenv("PBRICK_TEST_SIZE");
  ok = check(valid_with("size: 1G", "size: \"${PBRICK_TEST_UNSET:-${PBRICK_TEST_SIZE:-2}}G\""), &nested);
  ASSERT_TRUE(ok.empty()) << dump(ok);
  EXPECT_EQ(nested.bricks[0].store.size, 2ull << 30);
  errors = check(valid_with("size: 1G", "size: \"${PBRICK_TEST_UNSET:-${PBRICK_TEST_SIZE}}G\""));
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_NE(errors[0].message.find("environment variable PBRICK_TEST_SIZE is not set"), std::string::npos);
  errors = check(valid_with("size: 1G", "size: \"${PBRICK_TEST_UNSET:-${PBRICK_TEST_SIZE:-2}G\""));
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_NE(errors[0].message.find("unterminated"), std::string::npos);
  errors = check(valid_with("size: 1G", "size: \"${PBRICK_TEST_DIR\""));
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_NE(errors[0].message.find("unterminated"), std::string::npos);
  unsetenv("PBRICK_TEST_DIR");

  // List items are values too: a gateway's volumes, a volume's bricks.
  setenv("PBRICK_TEST_VOLUME", "vol0", 1);
  ClusterConfig listed;
  ok = check(valid_with("volumes: [vol0]", "volumes: [\"${PBRICK_TEST_VOLUME}\"]"), &listed);
  ASSERT_TRUE(ok.empty()) << dump(ok);
  EXPECT_EQ(listed.gateways[0].volumes, std::vector<std::string>{"vol0"});
  unsetenv("PBRICK_TEST_VOLUME");
  ok = check(valid_with("volumes: [vol0]", "volumes: [\"${PBRICK_TEST_UNSET:-vol0}\"]"));
  EXPECT_TRUE(ok.empty()) << dump(ok);
  errors = check(valid_with("volumes: [vol0]", "volumes: [\"${PBRICK_TEST_UNSET}\"]"));
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_EQ(errors[0].path, "gateways[0].volumes[0]");
  EXPECT_NE(errors[0].message.find("environment variable PBRICK_TEST_UNSET is not set"), std::string::npos);
}

TEST(ClusterConfigTest, TwoBrickRdmaExampleLoads) {
  auto c = load_cluster_config(kSourceDir + "/config/examples/two-brick-rdma.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message();
  ASSERT_EQ(c->bricks.size(), 2u);
  for (const BrickConfig& b : c->bricks) {
    SCOPED_TRACE(b.name);
    EXPECT_EQ(b.transport, Transport::kRdma);  // from the merge key
    EXPECT_EQ(b.persistence, Persistence::kSyncRead);
    EXPECT_EQ(b.nic.ddio, DdioMode::kOff);
    EXPECT_FALSE(b.nic.netdev.empty());
    EXPECT_FALSE(b.nic.rdma_device.empty());
    EXPECT_EQ(b.key_file, c->cluster.key_file);  // inherited
    EXPECT_FALSE(b.key_file.empty());
  }
  EXPECT_EQ(c->volumes_on("brick0").size(), 2u);
  EXPECT_EQ(c->volumes_on("brick1").size(), 1u);
  const VolumeConfig* db1 = c->find_volume("db1");
  ASSERT_NE(db1, nullptr);
  EXPECT_GT(db1->size, c->find_brick("brick1")->store.size);  // thin provisioning is fine
  EXPECT_EQ(c->find_volume("nope"), nullptr);
  ASSERT_NE(c->find_gateway("app0"), nullptr);
  EXPECT_EQ(c->find_gateway("app0")->volumes.size(), 2u);
}

// ---- bad-config fixtures: tests/fixtures/config/*.yaml ----
//
// Each fixture carries one "# expect: LINE:COL: SUBSTRING" line per error it
// must produce. The check is strict: every expectation must match a distinct
// error at exactly that position, and there must be no other errors (so one
// mistake never cascades into several messages).

struct Expectation {
  int line = 0;
  int column = 0;
  std::string substring;
};

std::vector<std::string> list_fixtures() {
  std::vector<std::string> out;
  std::string dir = kSourceDir + "/tests/fixtures/config";
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name.size() > 5 && name.compare(name.size() - 5, 5, ".yaml") == 0) out.push_back(name);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<Expectation> read_expectations(const std::string& path) {
  std::vector<Expectation> out;
  std::ifstream in(path);
  std::string line;
  const std::string tag = "# expect: ";
  while (std::getline(in, line)) {
    if (line.rfind(tag, 0) != 0) continue;
    Expectation e;
    std::istringstream rest(line.substr(tag.size()));
    char colon1 = 0, colon2 = 0;
    rest >> e.line >> colon1 >> e.column >> colon2;
    if (colon1 != ':' || colon2 != ':') {
      ADD_FAILURE() << path << ": malformed expect line: " << line;
      continue;
    }
    std::getline(rest, e.substring);
    if (!e.substring.empty() && e.substring[0] == ' ') e.substring.erase(0, 1);
    out.push_back(e);
  }
  return out;
}

TEST(ConfigFixturesTest, ThereAreFixtures) { EXPECT_GE(list_fixtures().size(), 20u); }

class ConfigFixtureTest : public testing::TestWithParam<std::string> {};

TEST_P(ConfigFixtureTest, ReportsExactlyTheExpectedErrors) {
  std::string path = kSourceDir + "/tests/fixtures/config/" + GetParam();
  std::vector<Expectation> expected = read_expectations(path);
  ASSERT_FALSE(expected.empty()) << path << " has no '# expect:' line";
  ConfigParseResult r = check_cluster_config_file(path);
  std::vector<bool> used(r.errors.size(), false);
  for (const Expectation& e : expected) {
    bool found = false;
    for (size_t i = 0; i < r.errors.size() && !found; i++) {
      const ConfigError& err = r.errors[i];
      if (used[i] || err.pos.line != e.line || err.pos.column != e.column) continue;
      if (err.to_string().find(e.substring) == std::string::npos) continue;
      EXPECT_EQ(err.file, path);
      used[i] = found = true;
    }
    EXPECT_TRUE(found) << "expected " << e.line << ":" << e.column << ": " << e.substring << "\ngot:\n"
                       << dump(r.errors);
  }
  EXPECT_EQ(r.errors.size(), expected.size()) << "got:\n" << dump(r.errors);
  // The convenience API fails the same file with EINVAL and every message.
  auto loaded = load_cluster_config(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.error().errnum(), EINVAL);
  for (const ConfigError& err : r.errors) {
    EXPECT_NE(loaded.error().context().find(err.to_string()), std::string::npos) << err.to_string();
  }
}

std::string fixture_test_name(const testing::TestParamInfo<std::string>& param) {
  std::string name = param.param.substr(0, param.param.size() - 5);  // drop ".yaml"
  for (char& c : name) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ConfigFixtureTest, testing::ValuesIn(list_fixtures()), fixture_test_name);

// ---- every error class, inline ----

TEST(ClusterConfigTest, SyntaxErrorHasPosition) {
  auto errors = check("cluster:\n  name: [demo\nbricks: []\n");
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_GT(errors[0].pos.line, 0);
  EXPECT_GT(errors[0].pos.column, 0);
  EXPECT_TRUE(errors[0].path.empty());
  EXPECT_EQ(errors[0].to_string().rfind("test.yaml:", 0), 0u) << errors[0].to_string();
  EXPECT_NE(errors[0].message.find("YAML syntax error"), std::string::npos);
  EXPECT_FALSE(check_cluster_config("a: [b\n", "x.yaml").yaml_ok);
  EXPECT_TRUE(check_cluster_config(kValid, "x.yaml").yaml_ok);

  // A line starting with ',' sends yaml-cpp 0.7's multi-document loop into
  // an endless, allocating loop; it must come back as a syntax error.
  auto comma = check("# comment\n, (persistence: sync-read)\n");
  ASSERT_EQ(comma.size(), 1u) << dump(comma);
  EXPECT_EQ(comma[0].to_string(), "test.yaml:2:1: YAML syntax error: unexpected character ','");

  auto tabs = check("cluster:\n\tname: demo\n");
  ASSERT_EQ(tabs.size(), 1u) << dump(tabs);
  EXPECT_NE(tabs[0].message.find("YAML syntax error"), std::string::npos);
}

TEST(ClusterConfigTest, WrongTypes) {
  expect_one(valid_with("host: 127.0.0.1\n    store", "port: \"abc\"\n    host: 127.0.0.1\n    store"), 5, 11,
             "bricks[0].port: expected an integer (decimal or 0x-prefixed hex), got 'abc'");
  expect_one(valid_with("  name: demo", "  name: {first: demo}"), 2, 9,
             "cluster.name: expected a single value, got a map");
  expect_one(valid_with("  name: demo", "  name: [demo]"), 2, 9, "cluster.name: expected a single value, got a list");
  expect_one(valid_with("store: {path: /var/lib/pbrick/b0.store, size: 1G}", "store: [/x, 1G]"), 6, 12,
             "bricks[0].store: expected a map, got a list");
  expect_one(valid_with("volumes: [vol0]", "volumes: vol0"), 15, 14,
             "gateways[0].volumes: expected a list of volume names, got a scalar");
  expect_one(valid_with("volumes: [vol0]", "volumes: [[vol0]]"), 15, 15,
             "gateways[0].volumes[0]: expected a volume name, got a list");
  // The whole document, a list entry, a list: each must be the right shape.
  auto top = check("- cluster\n");
  ASSERT_EQ(top.size(), 1u) << dump(top);
  EXPECT_EQ(top[0].message, "expected a map, got a list");
  expect_one(valid_with("  - name: client0\n    host: 127.0.0.1\n    volumes: [vol0]\n", "  - client0\n"), 13, 5,
             "gateways[0]: expected a map, got a scalar");
  expect_one(valid_with("bricks:\n", "bricks: brick0\nx-unused:\n"), 3, 9, "bricks: expected a list, got a scalar");
}

TEST(ClusterConfigTest, NullValueForRequiredKey) {
  expect_one(valid_with("  name: demo", "  name:"), 2, 3, "cluster.name: missing value for required key 'name'");
}

TEST(ClusterConfigTest, BadUnitsAndNumbers) {
  expect_one(valid_with("size: 1G}", "size: 12X}"), 6, 51,
             "bricks[0].store.size: invalid value '12X': unknown unit (use K, M, G, T or P)");
  expect_one(valid_with("    size: 1G\n", "    size: 1.5G\n"), 9, 11, "volumes[0].size: invalid value '1.5G': fractions are not accepted");
  expect_one(valid_with("    size: 1G\n", "    size: G\n"), 9, 11, "expected a size such as 512M or 4G");
  expect_one(valid_with("    size: 1G\n", "    size: 99999999999P\n"), 9, 11, "does not fit in 64 bits");
  expect_one(valid_with("base: 0x0", "base: 0x"), 11, 11, "volumes[0].base: expected an integer");
  expect_one(valid_with("base: 0x0", "base: 12abc"), 11, 11, "got '12abc'");
  expect_one(valid_with("base: 0x0", "base: 0x0\n    depth: 1e3"), 12, 12, "volumes[0].depth: expected an integer");
  expect_one(valid_with("base: 0x0", "base: 0x0\n    queues: 99999999999"), 12, 13,
             "volumes[0].queues: value 99999999999 is out of range");
}

TEST(ClusterConfigTest, NumbersAcceptHexAndDecimal) {
  ClusterConfig c;
  auto errors = check(valid_with("host: 127.0.0.1\n    store", "host: 127.0.0.1\n    port: 0x1bbc\n    store"), &c);
  ASSERT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(c.bricks[0].port, 7100u);
  errors = check(valid_with("base: 0x0", "base: 1073741824"), &c);
  ASSERT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(c.volumes[0].base, 1ull << 30);
}

TEST(ClusterConfigTest, PortRange) {
  auto with_port = [](const std::string& port) {
    return valid_with("host: 127.0.0.1\n    store", "host: 127.0.0.1\n    port: " + port + "\n    store");
  };
  expect_one(with_port("0"), 6, 11, "bricks[0].port: port 0 is out of range (1-65535)");
  expect_one(with_port("65536"), 6, 11, "port 65536 is out of range (1-65535)");
  EXPECT_TRUE(check(with_port("1")).empty());
  EXPECT_TRUE(check(with_port("65535")).empty());
}

TEST(ClusterConfigTest, QueuesAndDepthRange) {
  auto with = [](const std::string& kv) { return valid_with("base: 0x0", "base: 0x0\n    " + kv); };
  expect_one(with("queues: 0"), 12, 13, "volumes[0].queues: queues 0 is out of range (1-64)");
  expect_one(with("queues: 65"), 12, 13, "queues 65 is out of range (1-64)");
  EXPECT_TRUE(check(with("queues: 1")).empty());
  EXPECT_TRUE(check(with("queues: 64")).empty());
  expect_one(with("depth: 0"), 12, 12, "volumes[0].depth: depth 0 must be a power of two between 1 and 1024");
  expect_one(with("depth: 96"), 12, 12, "depth 96 must be a power of two");
  expect_one(with("depth: 2048"), 12, 12, "depth 2048 must be a power of two between 1 and 1024");
  EXPECT_TRUE(check(with("depth: 1")).empty());
  EXPECT_TRUE(check(with("depth: 1024")).empty());
}

TEST(ClusterConfigTest, PollPinnedQueuesAndChainedSyncs) {
  auto with = [](const std::string& kv) { return valid_with("base: 0x0", "base: 0x0\n    " + kv); };
  ClusterConfig c;
  ASSERT_TRUE(check(kValid, &c).empty());
  EXPECT_EQ(c.volumes[0].poll_us, 0u);  // the defaults: never poll, nothing pinned
  EXPECT_FALSE(c.volumes[0].pin_queues);
  EXPECT_TRUE(c.volumes[0].chained_syncs);
  ASSERT_TRUE(check(with("poll_us: 300\n    frontend: ublk\n    pin_queues: true"), &c).empty());
  EXPECT_EQ(c.volumes[0].poll_us, 300u);
  EXPECT_TRUE(c.volumes[0].pin_queues);
  EXPECT_TRUE(check(with("poll_us: 1000")).empty());
  expect_one(with("poll_us: 1001"), 12, 14,
             "volumes[0].poll_us: poll_us 1001 is out of range (0-1000 microseconds)");
  expect_one(with("pin_queues: yes"), 12, 17, "volumes[0].pin_queues: invalid value 'yes' (expected true or false)");
  expect_one(with("pin_queues: true"), 12, 17,
             "volumes[0].pin_queues: pin_queues pins the ublk frontend's queue threads; this volume's frontend is nbd");
  EXPECT_TRUE(check(with("pin_queues: false")).empty());
  ASSERT_TRUE(check(with("chained_syncs: false"), &c).empty());
  EXPECT_FALSE(c.volumes[0].chained_syncs);
  expect_one(with("chained_syncs: no"), 12, 20,
             "volumes[0].chained_syncs: invalid value 'no' (expected true or false)");
}

// A brick's connection budgets (pbrick-target --max-connections,
// --max-handshakes): 0 when the file says nothing, so the brick's defaults hold.
TEST(ClusterConfigTest, BrickConnectionBudgets) {
  auto with = [](const std::string& kv) { return valid_with("host: 127.0.0.1", "host: 127.0.0.1\n    " + kv); };
  ClusterConfig c;
  ASSERT_TRUE(check(kValid, &c).empty());
  EXPECT_EQ(c.bricks[0].max_connections, 0u);
  EXPECT_EQ(c.bricks[0].max_handshakes, 0u);
  const std::string tuned = with("max_connections: 512\n    max_handshakes: 256");
  ASSERT_TRUE(check(tuned, &c).empty()) << dump(check(tuned));
  EXPECT_EQ(c.bricks[0].max_connections, 512u);
  EXPECT_EQ(c.bricks[0].max_handshakes, 256u);
  EXPECT_TRUE(check(with("max_handshakes: 65536")).empty());
  expect_one(with("max_handshakes: 0"), 6, 21, "bricks[0].max_handshakes: max_handshakes 0 is out of range (1-65536)");
  expect_one(with("max_connections: 65537"), 6, 22,
             "bricks[0].max_connections: max_connections 65537 is out of range (1-65536)");
  expect_one(with("max_connections: many"), 6, 22,
             "bricks[0].max_connections: expected an integer (decimal or 0x-prefixed hex), got 'many'");
}

// `socket:` puts a brick on a unix socket instead of host:port: its endpoint
// (what pbrick-target listens on, what the gateway and pbrickctl reach) is
// unix:SOCKET.
TEST(ClusterConfigTest, ABrickOnAUnixSocket) {
  auto with = [](const std::string& kv) { return valid_with("host: 127.0.0.1", "host: 127.0.0.1\n    " + kv); };
  ClusterConfig c;
  ASSERT_TRUE(check(kValid, &c).empty());
  EXPECT_EQ(c.bricks[0].endpoint().to_string(), "127.0.0.1:7100");
  const std::string local = with("socket: /run/pbrick/brick0.sock");
  ASSERT_TRUE(check(local, &c).empty()) << dump(check(local));
  EXPECT_TRUE(c.bricks[0].endpoint().is_unix());
  EXPECT_EQ(c.bricks[0].endpoint().to_string(), "unix:/run/pbrick/brick0.sock");
  expect_one(with("socket: brick0.sock"), 6, 13,
             "bricks[0].socket: socket 'brick0.sock' must be an absolute path of at most 107 bytes");
  expect_one(with("socket: /" + std::string(107, 's')), 6, 13, "must be an absolute path of at most 107 bytes");
  expect_one(with("socket: /run/pbrick/b.sock\n    transport: rdma\n    nic: {rdma_device: rxe0}"), 6, 13,
             "bricks[0].socket: a unix socket is for transport 'tcp'; this brick's transport is 'rdma'");
  expect_one(with("socket: /var/lib/pbrick/b0.store"), 6, 13,
             "bricks[0].socket: socket '/var/lib/pbrick/b0.store' on 127.0.0.1 is already used by brick 'brick0'");

  // Two bricks on one host, each on a socket of its own, both with the
  // default port they do not listen on; a second brick on the same socket.
  const std::string both = with("socket: /run/pbrick/brick0.sock");
  std::string ok = both;
  ok.replace(ok.find("volumes:"), 8,
             "  - name: brick1\n    host: 127.0.0.1\n    socket: /run/pbrick/brick1.sock\n"
             "    store: {path: /var/lib/pbrick/b1.store, size: 1G}\nvolumes:");
  EXPECT_TRUE(check(ok).empty()) << dump(check(ok));
  std::string clash = both;
  clash.replace(clash.find("volumes:"), 8,
                "  - name: brick1\n    host: 127.0.0.1\n    socket: /run/pbrick/brick0.sock\n"
                "    store: {path: /var/lib/pbrick/b1.store, size: 1G}\nvolumes:");
  auto errors = check(clash);
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_NE(errors[0].to_string().find(
                "bricks[1].socket: socket '/run/pbrick/brick0.sock' on 127.0.0.1 is already used by brick 'brick0'"),
            std::string::npos)
      << errors[0].to_string();
}

TEST(ClusterConfigTest, SlowTier) {
  const std::string with_slow =
      valid_with("size: 1G}", "size: 32M, slow: {path: /var/lib/pbrick/b0.slow, size: 1G}}");
  ClusterConfig c;
  ASSERT_TRUE(check(with_slow, &c).empty()) << dump(check(with_slow));
  EXPECT_EQ(c.bricks[0].store.slow_path, "/var/lib/pbrick/b0.slow");
  EXPECT_EQ(c.bricks[0].store.slow_size, 1ull << 30);
  EXPECT_EQ(c.bricks[0].store.slow_low_watermark, 0u);  // the brick's defaults
  EXPECT_EQ(c.bricks[0].store.slow_demote_rate, 0u);
  const std::string tuned = valid_with(
      "size: 1G}", "size: 32M, slow: {path: /var/lib/pbrick/b0.slow, size: 1G, low_watermark: 4, demote_rate: 64M}}");
  ASSERT_TRUE(check(tuned, &c).empty()) << dump(check(tuned));
  EXPECT_EQ(c.bricks[0].store.slow_low_watermark, 4u);
  EXPECT_EQ(c.bricks[0].store.slow_demote_rate, 64ull << 20);
  auto bad = check(valid_with(
      "size: 1G}", "size: 32M, slow: {path: /var/lib/pbrick/b0.slow, size: 1G, low_watermark: 0, demote_rate: 1M}}"));
  EXPECT_NE(dump(bad).find("bricks[0].store.slow.low_watermark: low watermark must be at least 1"), std::string::npos)
      << dump(bad);
  EXPECT_NE(dump(bad).find("bricks[0].store.slow.demote_rate: demotion rate 1048576 is below one 2 MiB block"),
            std::string::npos)
      << dump(bad);
  ASSERT_TRUE(check(kValid, &c).empty());
  EXPECT_EQ(c.bricks[0].store.slow_path, "");
  auto errors = check(valid_with("size: 1G}", "size: 1G, slow: {path: rel.slow, size: 3M}}"));
  ASSERT_EQ(errors.size(), 2u) << dump(errors);
  EXPECT_NE(dump(errors).find("bricks[0].store.slow.path: slow tier path 'rel.slow' must be an absolute path"),
            std::string::npos)
      << dump(errors);
  EXPECT_NE(dump(errors).find("bricks[0].store.slow.size: slow tier size 3145728 is not a multiple"),
            std::string::npos)
      << dump(errors);
  errors = check(valid_with("size: 1G}", "size: 1G, slow: {path: /var/lib/pbrick/b0.store, size: 1G}}"));
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_NE(errors[0].to_string().find("is the store itself"), std::string::npos) << dump(errors);
  errors = check(valid_with("size: 1G}", "size: 1G, slow: {path: /x}}"));
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_NE(errors[0].to_string().find("bricks[0].store.slow"), std::string::npos) << dump(errors);
}

TEST(ClusterConfigTest, SizesMustBeWholeBlocks) {
  expect_one(valid_with("size: 1G}", "size: 0}"), 6, 51, "bricks[0].store.size: store size must not be zero");
  expect_one(valid_with("size: 1G}", "size: 1025M}"), 6, 51, "is not a multiple of the 2 MiB block size");
  expect_one(valid_with("    size: 1G\n", "    size: 0\n"), 9, 11, "volumes[0].size: volume size must not be zero");
  expect_one(valid_with("    size: 1G\n", "    size: 4097K\n"), 9, 11,
             "volumes[0].size: volume size 4195328 is not a multiple of the 2 MiB block size");
  EXPECT_TRUE(check(valid_with("    size: 1G\n", "    size: 2M\n")).empty());
}

TEST(ClusterConfigTest, UnknownKeysAtEveryLevel) {
  expect_one(valid_with("cluster:\n", "clutser: 1\ncluster:\n"), 1, 1, "clutser: unknown key 'clutser'");
  expect_one(valid_with("  name: demo\n", "  name: demo\n  nmae: x\n"), 3, 3, "cluster.nmae: unknown key");
  expect_one(valid_with("    store:", "    stroe: {}\n    store:"), 6, 5,
             "bricks[0].stroe: unknown key 'stroe' (did you mean 'store'?)");
  expect_one(valid_with("size: 1G}", "size: 1G, sise: 2G}"), 6, 55, "bricks[0].store.sise: unknown key 'sise'");
  expect_one(valid_with("size: 1G}", "size: 1G}\n    nic: {netdev: eth0, ddoi: off}"), 7, 25,
             "bricks[0].nic.ddoi: unknown key 'ddoi' (did you mean 'ddio'?)");
  expect_one(valid_with("    base: 0x0\n", "    base: 0x0\n    bricks: [brick0]\n"), 12, 13,
             "volumes[0].bricks: give either 'brick: NAME' or 'bricks: [NAME, ...]', not both");
  expect_one(valid_with("    volumes: [vol0]", "    volumes: [vol0]\n    hots: x"), 16, 5,
             "gateways[0].hots: unknown key 'hots' (did you mean 'host'?)");
  // "x-" keys are reserved for anchors at the top level only.
  EXPECT_TRUE(check(std::string("x-defaults: {a: 1}\n") + kValid).empty());
  expect_one(valid_with("  name: demo\n", "  name: demo\n  x-note: hi\n"), 3, 3, "cluster.x-note: unknown key");
}

TEST(ClusterConfigTest, DuplicateKey) {
  expect_one(valid_with("    base: 0x0\n", "    base: 0x0\n    base: 0x200000\n"), 12, 5,
             "volumes[0].base: duplicate key 'base'");
}

TEST(ClusterConfigTest, MissingRequiredKeys) {
  expect_one(valid_with("cluster:\n  name: demo\n", ""), 1, 1, "cluster: missing required key 'cluster'");
  expect_one(valid_with("    host: 127.0.0.1\n    store", "    store"), 4, 5, "bricks[0].host: missing required key 'host'");
  expect_one(valid_with("    store: {path: /var/lib/pbrick/b0.store, size: 1G}\n", ""), 4, 5,
             "bricks[0].store: missing required key 'store'");
  expect_one(valid_with("path: /var/lib/pbrick/b0.store, ", ""), 6, 12,
             "bricks[0].store.path: missing required key 'path'");
  expect_one(valid_with("    brick: brick0\n", ""), 8, 5, "volumes[0].brick: missing required key 'brick'");
  expect_one(valid_with("    base: 0x0\n", ""), 8, 5, "volumes[0].base: missing required key 'base'");
  expect_one(valid_with("    host: 127.0.0.1\n    volumes", "    volumes"), 13, 5,
             "gateways[0].host: missing required key 'host'");
  auto empty = check("# nothing here\n");
  ASSERT_EQ(empty.size(), 1u);
  EXPECT_NE(empty[0].message.find("empty configuration"), std::string::npos);
  auto no_bricks = check("cluster: {name: demo}\nbricks: []\n");
  ASSERT_EQ(no_bricks.size(), 1u) << dump(no_bricks);
  EXPECT_EQ(no_bricks[0].to_string(), "test.yaml:2:9: bricks: at least one brick is required");
}

TEST(ClusterConfigTest, OptionalListsMayBeAbsentOrEmpty) {
  EXPECT_TRUE(check("cluster: {name: demo}\nbricks: [{name: b, host: h, store: {path: /s, size: 2M}}]\n").empty());
  EXPECT_TRUE(check("cluster: {name: demo}\nbricks: [{name: b, host: h, store: {path: /s, size: 2M}}]\n"
                    "volumes:\ngateways: []\n")
                  .empty());
}

TEST(ClusterConfigTest, DuplicateNames) {
  std::string two_bricks = valid_with("volumes:\n", "  - name: brick0\n    host: 10.0.0.2\n"
                                                    "    store: {path: /var/lib/pbrick/b1.store, size: 1G}\nvolumes:\n");
  expect_one(two_bricks, 7, 11, "bricks[1].name: duplicate brick name 'brick0', first defined at bricks[0].name (line 4)");
  expect_one(valid_with("gateways:\n", "  - {name: vol0, size: 2M, brick: brick0, base: 0x40000000}\ngateways:\n"), 12,
             12, "volumes[1].name: duplicate volume name 'vol0'");
  expect_one(std::string(kValid) + "  - {name: client0, host: 10.0.0.9}\n", 16, 12,
             "gateways[1].name: duplicate gateway name 'client0'");
}

TEST(ClusterConfigTest, UnknownReferences) {
  expect_one(valid_with("brick: brick0", "brick: brick7"), 10, 12,
             "volumes[0].brick: unknown brick 'brick7' (known bricks: brick0)");
  expect_one(valid_with("volumes: [vol0]", "volumes: [vol0, vol7]"), 15, 21,
             "gateways[0].volumes[1]: unknown volume 'vol7'");
}

TEST(ClusterConfigTest, InvalidEnumValues) {
  auto with = [](const std::string& kv) {
    return valid_with("host: 127.0.0.1\n    store", "host: 127.0.0.1\n    " + kv + "\n    store");
  };
  expect_one(with("transport: udp"), 6, 16, "bricks[0].transport: invalid value 'udp' (expected tcp or rdma)");
  expect_one(with("transport: TCP"), 6, 16, "invalid value 'TCP'");  // case matters
  expect_one(with("persistence: sync"), 6, 18, "invalid value 'sync' (expected sync-read or rpc)");
  expect_one(with("nic: {ddio: disabled}"), 6, 17,
             "bricks[0].nic.ddio: invalid value 'disabled' (expected off, on or unmanaged)");
  expect_one(valid_with("base: 0x0", "base: 0x0\n    frontend: iscsi"), 12, 15,
             "volumes[0].frontend: invalid value 'iscsi' (expected ublk or nbd)");
}

TEST(ClusterConfigTest, BaseAlignment) {
  expect_one(valid_with("base: 0x0", "base: 0x1000"), 11, 11,
             "volumes[0].base: base 0x1000 is not aligned to the 2 MiB block size");
  EXPECT_TRUE(check(valid_with("base: 0x0", "base: 0x200000")).empty());
  expect_one(valid_with("base: 0x0", "base: 0xffffffffffe00000"), 9, 11, "overflows the 64-bit address space");
}

TEST(ClusterConfigTest, OverlappingVolumes) {
  auto with_second = [](const std::string& base, const std::string& brick = "brick0") {
    return valid_with("gateways:\n", "  - {name: vol1, size: 1G, brick: " + brick + ", base: " + base + "}\ngateways:\n");
  };
  expect_one(with_second("0x20000000"), 12, 49,
             "volumes[1].base: range [0x20000000, 0x60000000) overlaps volume 'vol0' [0x0, 0x40000000) on brick "
             "'brick0'");
  expect_one(with_second("0x0"), 12, 49, "overlaps volume 'vol0'");
  EXPECT_TRUE(check(with_second("0x40000000")).empty());  // adjacent is fine: ranges are half-open
  // The same range on another brick is fine.
  std::string other = with_second("0x0", "brick1");
  other = other.replace(other.find("volumes:\n"), 9,
                        "  - {name: brick1, host: 127.0.0.1, port: 7101, store: {path: /s1, size: 1G}}\nvolumes:\n");
  EXPECT_TRUE(check(other).empty()) << dump(check(other));
  // Contained entirely inside another volume.
  auto inner = valid_with("gateways:\n", "  - {name: vol1, size: 2M, brick: brick0, base: 0x200000}\ngateways:\n");
  expect_one(inner, 12, 49, "overlaps volume 'vol0'");
}

TEST(ClusterConfigTest, ThinProvisioningIsNotAnError) {
  ClusterConfig c;
  auto errors = check(valid_with("    size: 1G\n", "    size: 1T\n"), &c);
  EXPECT_TRUE(errors.empty()) << dump(errors);
  EXPECT_GT(c.volumes[0].size, c.bricks[0].store.size);
}

TEST(ClusterConfigTest, SyncReadNeedsDdioOff) {
  auto brick = [](const std::string& nic) {
    return valid_with("size: 1G}", "size: 1G}\n    transport: rdma\n    persistence: sync-read\n    nic: " + nic);
  };
  for (std::string ddio : {"unmanaged", "on"}) {
    SCOPED_TRACE(ddio);
    auto errors = check(brick("{netdev: eth0, rdma_device: mlx5_0, ddio: " + ddio + "}"));
    ASSERT_EQ(errors.size(), 1u) << dump(errors);
    std::string text = errors[0].to_string();
    EXPECT_EQ(errors[0].pos.line, 8);
    EXPECT_EQ(errors[0].pos.column, 18);
    EXPECT_EQ(errors[0].path, "bricks[0].persistence");
    EXPECT_NE(text.find("sync-read' needs DDIO off"), std::string::npos) << text;
    EXPECT_NE(text.find("nic.ddio: off"), std::string::npos) << text;
    EXPECT_NE(text.find("persistence: rpc"), std::string::npos) << text;
  }
  // Over TCP the brick's CPU persists: sync-read needs no DDIO setting there.
  EXPECT_TRUE(check(valid_with("size: 1G}", "size: 1G}\n    persistence: sync-read")).empty());
  EXPECT_TRUE(check(brick("{netdev: eth0, rdma_device: mlx5_0, ddio: off}")).empty());
}

TEST(ClusterConfigTest, RdmaNeedsRdmaDevice) {
  expect_one(valid_with("size: 1G}", "size: 1G}\n    transport: rdma"), 7, 16,
             "bricks[0].transport: transport 'rdma' requires nic.rdma_device");
  expect_one(valid_with("size: 1G}", "size: 1G}\n    transport: rdma\n    nic: {netdev: eth0}"), 7, 16,
             "requires nic.rdma_device");
  EXPECT_TRUE(check(valid_with("size: 1G}", "size: 1G}\n    transport: rdma\n    nic: {rdma_device: rxe0}")).empty());
}

TEST(ClusterConfigTest, ManagedDdioNeedsNetdev) {
  expect_one(valid_with("size: 1G}", "size: 1G}\n    nic: {ddio: on}"), 7, 17,
             "bricks[0].nic.ddio: ddio 'on' requires nic.netdev");
  EXPECT_TRUE(check(valid_with("size: 1G}", "size: 1G}\n    nic: {ddio: unmanaged}")).empty());
}

// Two bricks of one host on one NIC cannot want its root port's DDIO both
// ways: the second 'pbrickctl ddio apply' would undo the first, and with it
// the durability of a sync-read brick's acknowledged writes.
TEST(ClusterConfigTest, BricksSharingANicAgreeOnItsDdio) {
  auto two = [](const std::string& ddio0, const std::string& ddio1, const std::string& host1,
                const std::string& netdev1) {
    return valid_with("store: {path: /var/lib/pbrick/b0.store, size: 1G}",
                      "store: {path: /var/lib/pbrick/b0.store, size: 1G}\n"
                      "    nic: {netdev: eth0, ddio: " + ddio0 + "}\n"
                      "  - name: brick1\n"
                      "    host: " + host1 + "\n"
                      "    port: 7101\n"
                      "    store: {path: /var/lib/pbrick/b1.store, size: 1G}\n"
                      "    nic: {netdev: " + netdev1 + ", ddio: " + ddio1 + "}");
  };
  expect_one(two("off", "on", "127.0.0.1", "eth0"), 12, 31,
             "bricks[1].nic.ddio: ddio 'on' on eth0 of 127.0.0.1 contradicts brick 'brick0', which sets it 'off'");
  expect_one(two("on", "off", "127.0.0.1", "eth0"), 12, 31, "contradicts brick 'brick0', which sets it 'on'");
  for (auto [ddio1, host1, netdev1] : {std::tuple<const char*, const char*, const char*>{"off", "127.0.0.1", "eth0"},
                                       {"unmanaged", "127.0.0.1", "eth0"},
                                       {"on", "127.0.0.1", "eth1"},
                                       {"on", "10.0.0.2", "eth0"}}) {
    SCOPED_TRACE(std::string(ddio1) + " " + host1 + " " + netdev1);
    auto errors = check(two("off", ddio1, host1, netdev1));
    EXPECT_TRUE(errors.empty()) << dump(errors);
  }
}

// A value that does not parse is one mistake, reported once.
TEST(ClusterConfigTest, AnUnparsedTieringValueIsOneError) {
  auto errors = check(valid_with("size: 1G}", "size: 32M, slow: {path: /var/lib/pbrick/b0.slow, size: 1G, "
                                              "low_watermark: 1k, demote_rate: 1.5G}}"));
  ASSERT_EQ(errors.size(), 2u) << dump(errors);
  EXPECT_EQ(errors[0].path, "bricks[0].store.slow.low_watermark");
  EXPECT_EQ(errors[1].path, "bricks[0].store.slow.demote_rate");
}

TEST(ClusterConfigTest, OneVolumeOneGateway) {
  expect_one(std::string(kValid) + "  - {name: client1, host: 10.0.0.9, volumes: [vol0]}\n", 16, 47,
             "gateways[1].volumes[0]: volume 'vol0' is already exposed by gateway 'client0'");
  expect_one(valid_with("volumes: [vol0]", "volumes: [vol0, vol0]"), 15, 21, "volume 'vol0' is listed twice");
}

TEST(ClusterConfigTest, NamesHostsAndPaths) {
  expect_one(valid_with("name: client0", "name: client 0"), 13, 11, "gateways[0].name: invalid name 'client 0'");
  expect_one(valid_with("  name: demo", "  name: " + std::string(64, 'c')), 2, 9, "cluster.name: invalid name");
  EXPECT_TRUE(check(valid_with("  name: demo", "  name: " + std::string(63, 'c'))).empty());
  EXPECT_TRUE(check(valid_with("  name: demo", "  name: rack-1.a_b")).empty());
  expect_one(valid_with("path: /var/lib/pbrick/b0.store", "path: b0.store"), 6, 19,
             "bricks[0].store.path: store path 'b0.store' must be an absolute path");
  expect_one(valid_with("  name: demo\n", "  name: demo\n  key_file: cluster.key\n"), 3, 13,
             "cluster.key_file: key file 'cluster.key' must be an absolute path");
  expect_one(valid_with("    host: 127.0.0.1\n    store", "    host: 127.0.0.1\n    key_file: k\n    store"), 6, 15,
             "bricks[0].key_file: key file 'k' must be an absolute path");
  // An empty key file (an unset ${VAR:-}) would turn authentication off
  // unannounced, for one brick or for all.
  expect_one(valid_with("    host: 127.0.0.1\n    store",
                        "    host: 127.0.0.1\n    key_file: \"${PBRICK_TEST_UNSET:-}\"\n    store"),
             6, 15, "bricks[0].key_file: key file is empty (leave the key out for cluster.key_file)");
  expect_one(valid_with("  name: demo\n", "  name: demo\n  key_file: \"\"\n"), 3, 13,
             "cluster.key_file: key file is empty (leave the key out for no authentication)");
  expect_one(valid_with("    host: 127.0.0.1\n    store", "    host: \"a b\"\n    store"), 5, 11,
             "bricks[0].host: invalid host 'a b'");
  // HOST:PORT must read back as that host: no brackets (an IPv6 address is
  // written bare), and not "unix" ("unix:7100" is a socket path).
  for (const char* host : {"\"[::1]\"", "unix"}) {
    SCOPED_TRACE(host);
    expect_one(valid_with("    host: 127.0.0.1\n    store", std::string("    host: ") + host + "\n    store"), 5, 11,
               "bricks[0].host: invalid host");
  }
  ClusterConfig c;
  auto v6 = check(valid_with("    host: 127.0.0.1\n    store", "    host: \"::1\"\n    store"), &c);
  ASSERT_TRUE(v6.empty()) << dump(v6);
  EXPECT_EQ(c.bricks[0].endpoint().to_string(), "[::1]:7100");
}

// A size whose share of each brick does not fit 64 bits is refused, not
// wrapped to a small range that then overlaps nothing.
TEST(ClusterConfigTest, AVolumeTooLargeForTheAddressSpaceIsRefused) {
  const std::string two = R"(cluster: {name: demo}
bricks:
  - {name: b0, host: h0, store: {path: /s, size: 1G}}
  - {name: b1, host: h1, store: {path: /s, size: 1G}}
volumes:
  - {name: small, size: 1G, bricks: [b0, b1], layout: mirror, base: 0x40000000}
)";
  // 2^64 - 2 MiB mirrored on two bricks: 2^43 slots of 2 MiB on each, 2^64
  // bytes, which wrapped to 0 and overlapped nothing.
  auto errors =
      check(two + "  - {name: huge, size: 18446744073707454464, bricks: [b0, b1], layout: mirror, base: 0}\n");
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_EQ(errors[0].path, "volumes[1].base");
  EXPECT_NE(errors[0].to_string().find("must end at or below"), std::string::npos) << errors[0].to_string();
}

TEST(ClusterConfigTest, EndpointAndStoreClashes) {
  std::string second = valid_with(
      "volumes:\n", "  - {name: brick1, host: 127.0.0.1, store: {path: /var/lib/pbrick/b0.store, size: 1G}}\nvolumes:\n");
  auto errors = check(second);
  ASSERT_EQ(errors.size(), 2u) << dump(errors);
  EXPECT_NE(errors[0].to_string().find("bricks[1]"), std::string::npos);
  EXPECT_NE(dump(errors).find("127.0.0.1:7100 is already used by brick 'brick0'"), std::string::npos);
  EXPECT_NE(dump(errors).find("is already used by brick 'brick0'"), std::string::npos);
  // Same path on another host is a different store.
  std::string other_host = valid_with(
      "volumes:\n", "  - {name: brick1, host: 10.0.0.2, store: {path: /var/lib/pbrick/b0.store, size: 1G}}\nvolumes:\n");
  EXPECT_TRUE(check(other_host).empty()) << dump(check(other_host));
}

TEST(ClusterConfigTest, DefaultsAreApplied) {
  ClusterConfig c;
  ASSERT_TRUE(check(kValid, &c).empty());
  const BrickConfig& b = c.bricks[0];
  EXPECT_EQ(b.port, 7100u);
  EXPECT_EQ(b.transport, Transport::kTcp);
  EXPECT_EQ(b.persistence, Persistence::kRpc);
  EXPECT_EQ(b.nic.ddio, DdioMode::kUnmanaged);
  EXPECT_TRUE(b.nic.netdev.empty());
  const VolumeConfig& v = c.volumes[0];
  EXPECT_EQ(v.queues, 1u);
  EXPECT_EQ(v.depth, 64u);
  EXPECT_EQ(v.frontend, Frontend::kNbd);
}

TEST(ClusterConfigTest, KeyFileInheritance) {
  std::string yaml = valid_with("  name: demo\n", "  name: demo\n  key_file: /etc/pbrick/cluster.key\n");
  ClusterConfig c;
  ASSERT_TRUE(check(yaml, &c).empty());
  EXPECT_EQ(c.bricks[0].key_file, "/etc/pbrick/cluster.key");
  yaml = valid_with("  name: demo\n", "  name: demo\n  key_file: /etc/pbrick/cluster.key\n");
  yaml.replace(yaml.find("    store:"), 10, "    key_file: /etc/pbrick/b0.key\n    store:");
  ASSERT_TRUE(check(yaml, &c).empty()) << dump(check(yaml));
  EXPECT_EQ(c.bricks[0].key_file, "/etc/pbrick/b0.key");
}

TEST(ClusterConfigTest, MergeKeysExplicitWins) {
  std::string yaml = R"(x-defaults: &d
  port: 7200
  transport: rdma
  nic: {rdma_device: rxe0}
cluster: {name: demo}
bricks:
  - <<: *d
    name: b0
    host: h0
    store: {path: /s, size: 2M}
  - <<: [*d]
    name: b1
    host: h1
    port: 7300
    store: {path: /s, size: 2M}
)";
  ClusterConfig c;
  auto errors = check(yaml, &c);
  ASSERT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(c.bricks[0].port, 7200u);
  EXPECT_EQ(c.bricks[0].transport, Transport::kRdma);
  EXPECT_EQ(c.bricks[0].nic.rdma_device, "rxe0");
  EXPECT_EQ(c.bricks[1].port, 7300u);
  expect_one("cluster: {name: demo, <<: 5}\nbricks: [{name: b, host: h, store: {path: /s, size: 2M}}]\n", 1, 27,
             "a merge key ('<<') takes a map or a list of maps");
}

// Duplicate keys are errors in a map that is merged too, reported once where
// they are written however many places merge it; so is a repeated merge key.
TEST(ClusterConfigTest, DuplicateKeysInAMergedMapAreReportedOnce) {
  const std::string yaml = R"(x-defaults: &d
  persistence: rpc
  persistence: sync-read
cluster: {name: demo}
bricks:
  - <<: *d
    name: b0
    host: h0
    store: {path: /s, size: 2M}
  - <<: *d
    <<: *d
    name: b1
    host: h1
    store: {path: /s, size: 2M}
)";
  auto errors = check(yaml);
  ASSERT_EQ(errors.size(), 2u) << dump(errors);
  EXPECT_EQ(errors[0].pos.line, 3);
  EXPECT_NE(errors[0].message.find("duplicate key 'persistence'"), std::string::npos) << dump(errors);
  EXPECT_EQ(errors[1].pos.line, 11);
  EXPECT_NE(errors[1].message.find("duplicate key '<<'"), std::string::npos) << dump(errors);
}

TEST(ClusterConfigTest, MultipleDocumentsRejected) {
  auto errors = check(std::string(kValid) + "---\ncluster: {name: other}\n");
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_EQ(errors[0].pos.line, 17);
  EXPECT_NE(errors[0].message.find("only one YAML document"), std::string::npos);
}

TEST(ClusterConfigTest, CollectsAllErrorsSortedWithoutCascades) {
  std::string yaml = R"(cluster: {name: demo}
bricks:
  - name: brick0
    host: 127.0.0.1
    port: 0
    transport: udp
    store: {path: /s, size: 12X}
volumes:
  - {name: vol0, size: 3M, brick: brick0, base: 0x1}
  - {name: vol1, size: huge, brick: brick0, base: 0x0}
)";
  auto errors = check(yaml);
  std::vector<std::string> expected = {
      "test.yaml:5:11: bricks[0].port: port 0 is out of range (1-65535)",
      "test.yaml:6:16: bricks[0].transport: invalid value 'udp' (expected tcp or rdma)",
      "test.yaml:7:29: bricks[0].store.size: invalid value '12X': unknown unit (use K, M, G, T or P)",
      "test.yaml:9:24: volumes[0].size: volume size 3145728 is not a multiple of the 2 MiB block size",
      "test.yaml:9:49: volumes[0].base: base 0x1 is not aligned to the 2 MiB block size",
      "test.yaml:10:24: volumes[1].size: invalid value 'huge': expected a size such as 512M or 4G",
  };
  ASSERT_EQ(errors.size(), expected.size()) << dump(errors);
  for (size_t i = 0; i < expected.size(); i++) EXPECT_EQ(errors[i].to_string(), expected[i]);
}

TEST(ClusterConfigTest, BrokenEntryDoesNotCascadeIntoReferences) {
  // bricks[0] is not a map, so its name is unknown: the volume's reference to
  // it is not reported as unknown on top.
  std::string yaml = "cluster: {name: demo}\nbricks:\n  - brick0\nvolumes:\n"
                     "  - {name: vol0, size: 2M, brick: brick0, base: 0x0}\n";
  auto errors = check(yaml);
  ASSERT_EQ(errors.size(), 1u) << dump(errors);
  EXPECT_EQ(errors[0].to_string(), "test.yaml:3:5: bricks[0]: expected a map, got a scalar");
}

TEST(ClusterConfigTest, ValidatesHandBuiltConfig) {
  ClusterConfig c;
  c.cluster.name = "demo";
  BrickConfig b;
  b.name = "b0";
  b.host = "h";
  b.port = 7100;
  b.store = {"/s", 4 << 20, "", 0};
  b.persistence = Persistence::kSyncRead;
  b.transport = Transport::kRdma;
  b.nic.rdma_device = "rxe0";
  c.bricks.push_back(b);
  VolumeConfig v;
  v.name = "v0";
  v.brick = "b9";
  v.size = 2 << 20;
  c.volumes.push_back(v);
  auto errors = validate_cluster_config(c);
  ASSERT_EQ(errors.size(), 2u) << dump(errors);
  EXPECT_EQ(errors[0].pos.line, 0);
  EXPECT_NE(errors[0].to_string().find("bricks[0].persistence: persistence 'sync-read'"), std::string::npos);
  EXPECT_EQ(errors[1].to_string(), "volumes[0].brick: unknown brick 'b9' (known bricks: b0)");
}

TEST(ClusterConfigTest, ErrorFormatting) {
  EXPECT_EQ((ConfigError{"c.yaml", {3, 7}, "bricks[0].port", "bad"}).to_string(), "c.yaml:3:7: bricks[0].port: bad");
  EXPECT_EQ((ConfigError{"c.yaml", {3, 7}, "", "bad"}).to_string(), "c.yaml:3:7: bad");
  EXPECT_EQ((ConfigError{"c.yaml", {}, "cluster.name", "bad"}).to_string(), "c.yaml: cluster.name: bad");
  EXPECT_EQ((ConfigError{"", {2, 1}, "", "bad"}).to_string(), "2:1: bad");
  EXPECT_EQ((ConfigError{"", {}, "x", "bad"}).to_string(), "x: bad");
}

TEST(ClusterConfigTest, EnumNames) {
  EXPECT_STREQ(transport_name(Transport::kRdma), "rdma");
  EXPECT_STREQ(ddio_mode_name(DdioMode::kUnmanaged), "unmanaged");
  EXPECT_STREQ(persistence_name(Persistence::kSyncRead), "sync-read");
  EXPECT_STREQ(frontend_name(Frontend::kUblk), "ublk");
}

// ---- file-level API and the CLI entry point ----

TEST(ClusterConfigTest, LoadReportsFileErrors) {
  auto missing = load_cluster_config("/nonexistent/pbrick.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().errnum(), ENOENT);
  auto dir = load_cluster_config("/tmp");
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.error().errnum(), EISDIR);
  ConfigParseResult r = check_cluster_config_file("/nonexistent/pbrick.yaml");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].to_string().find("No such file"), std::string::npos) << r.errors[0].to_string();
}

TEST(ClusterConfigTest, LoadJoinsAllErrors) {
  TempDir tmp;
  std::string path = tmp.write("bad.yaml", valid_with("size: 1G}", "size: 0}\n    port: 0"));
  auto c = load_cluster_config(path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().errnum(), EINVAL);
  EXPECT_EQ(c.error().context(), path + ":6:51: bricks[0].store.size: store size must not be zero\n" + path +
                                     ":7:11: bricks[0].port: port 0 is out of range (1-65535)");
}

int run_check(std::vector<std::string> args, std::string* out, std::string* err) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  int rc = config_check_main(static_cast<int>(argv.size()), argv.data());
  *out = testing::internal::GetCapturedStdout();
  *err = testing::internal::GetCapturedStderr();
  return rc;
}

TEST(ConfigCheckMainTest, OkSummary) {
  std::string out, err;
  std::string path = kSourceDir + "/config/examples/two-brick-rdma.yaml";
  EXPECT_EQ(run_check({"check", path}, &out, &err), 0) << err;
  EXPECT_EQ(out, path + ": OK (2 bricks, 3 volumes, 2 gateways)\n");
  EXPECT_EQ(err, "");
}

TEST(ConfigCheckMainTest, EveryErrorOnItsOwnLine) {
  TempDir tmp;
  std::string path = tmp.write("bad.yaml", valid_with("size: 1G}", "size: 0}\n    port: 0"));
  std::string out, err;
  EXPECT_EQ(run_check({"check", path}, &out, &err), 1);
  EXPECT_EQ(out, "");
  EXPECT_EQ(err, path + ":6:51: bricks[0].store.size: store size must not be zero\n" + path +
                     ":7:11: bricks[0].port: port 0 is out of range (1-65535)\n");
  EXPECT_EQ(run_check({"check", tmp.path() + "/missing.yaml"}, &out, &err), 1);
  EXPECT_NE(err.find("missing.yaml"), std::string::npos) << err;
}

TEST(ConfigCheckMainTest, UsageErrors) {
  std::string out, err;
  EXPECT_EQ(run_check({"check"}, &out, &err), 2);
  EXPECT_NE(err.find("usage: pbrickctl config check FILE"), std::string::npos);
  EXPECT_EQ(run_check({"check", "a.yaml", "b.yaml"}, &out, &err), 2);
  EXPECT_EQ(run_check({"check", "--frobnicate", "a.yaml"}, &out, &err), 2);
  EXPECT_EQ(run_check({"check", "--help"}, &out, &err), 0);
  EXPECT_NE(out.find("usage:"), std::string::npos);
}

// A volume over several bricks: `bricks:` in layout order and `layout:`;
// `brick:` stays the one-brick form. Unknown or repeated bricks, and a brick
// count that does not fit the layout, are errors at the right place.
TEST(ClusterConfigTest, StripedVolumesNameTheirBricksInOrder) {
  const std::string three = R"(cluster: {name: demo}
bricks:
  - {name: b0, host: h0, store: {path: /s, size: 1G}}
  - {name: b1, host: h1, store: {path: /s, size: 1G}}
  - {name: b2, host: h2, store: {path: /s, size: 1G}}
volumes:
)";
  ClusterConfig c;
  auto errors = check(three + "  - {name: v, size: 3G, bricks: [b2, b0, b1], layout: stripe, base: 0}\n", &c);
  ASSERT_TRUE(errors.empty()) << dump(errors);
  ASSERT_EQ(c.volumes.size(), 1u);
  EXPECT_EQ(c.volumes[0].bricks, (std::vector<std::string>{"b2", "b0", "b1"}));
  EXPECT_EQ(c.volumes[0].brick, "b2");
  EXPECT_EQ(c.volumes[0].layout, Layout::kStripe);
  errors = check(three + "  - {name: v, size: 1G, brick: b1, base: 0}\n", &c);
  ASSERT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(c.volumes[0].bricks, (std::vector<std::string>{"b1"}));
  EXPECT_EQ(c.volumes[0].layout, Layout::kSingle);

  struct Case {
    const char* volume;
    int column;
    const char* error;
  };
  const Case cases[] = {
      {"bricks: [b0, b9], layout: stripe", 38, "volumes[0].bricks[1]: unknown brick 'b9' (known bricks: b0, b1, b2)"},
      {"bricks: [b0, b0], layout: stripe", 38, "volumes[0].bricks[1]: brick 'b0' is named twice"},
      {"bricks: [b0, b1]", 33, "volumes[0].bricks: layout single takes one brick, not 2 (use 'layout: stripe')"},
      {"brick: b0, layout: stripe", 32, "volumes[0].brick: layout stripe takes at least two bricks"},
      {"bricks: [b0, b1], layout: raid5", 51, "volumes[0].layout"},
      {"layout: stripe", 5, "volumes[0].brick: missing required key 'brick'"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.volume);
    expect_one(three + "  - {name: v, size: 1G, " + k.volume + ", base: 0}\n", 7, k.column, k.error);
  }
}

// Layout mirror: `copies:` 2 (default) or 3, at most the brick count, only
// with mirror; a mirror's share of each brick is ceil(blocks / N) * copies
// blocks, which the overlap check uses.
TEST(ClusterConfigTest, MirroredVolumesKeepTwoOrThreeCopies) {
  const std::string three = R"(cluster: {name: demo}
bricks:
  - {name: b0, host: h0, store: {path: /s, size: 1G}}
  - {name: b1, host: h1, store: {path: /s, size: 1G}}
  - {name: b2, host: h2, store: {path: /s, size: 1G}}
volumes:
)";
  ClusterConfig c;
  auto errors = check(three + "  - {name: v, size: 1G, bricks: [b0, b1], layout: mirror, base: 0}\n", &c);
  ASSERT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(c.volumes[0].layout, Layout::kMirror);
  EXPECT_EQ(c.volumes[0].copies, 2u);
  errors = check(three + "  - {name: v, size: 1G, bricks: [b0, b1, b2], layout: mirror, copies: 3, base: 0}\n", &c);
  ASSERT_TRUE(errors.empty()) << dump(errors);
  EXPECT_EQ(c.volumes[0].copies, 3u);

  struct Case {
    const char* volume;
    int column;
    const char* error;
  };
  const Case cases[] = {
      {"bricks: [b0, b1], layout: mirror, copies: 3", 33,
       "volumes[0].bricks: layout mirror with 3 copies takes at least 3 bricks, not 2"},
      {"bricks: [b0, b1, b2], layout: mirror, copies: 4", 71, "volumes[0].copies: layout mirror keeps 2 or 3 copies, not 4"},
      {"bricks: [b0, b1], layout: stripe, copies: 2", 67, "volumes[0].copies: copies go with 'layout: mirror'"},
      {"brick: b0, layout: mirror", 32, "volumes[0].brick: layout mirror with 2 copies takes at least 2 bricks, not 1"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.volume);
    expect_one(three + "  - {name: v, size: 1G, " + k.volume + ", base: 0}\n", 7, k.column, k.error);
  }
  // 2 GiB over 2 bricks with 2 copies takes [0, 2G) of each: a volume at 1G overlaps it.
  expect_one(three + "  - {name: m, size: 2G, bricks: [b0, b1], layout: mirror, base: 0}\n" +
                 "  - {name: v, size: 2M, brick: b1, base: 0x40000000}\n",
             8, 42, "volumes[1].base: range [0x40000000, 0x40200000) overlaps volume 'm' [0x0, 0x80000000) on brick 'b1'");
}

}  // namespace
}  // namespace pbrick

namespace pbrick {
namespace {

// A striped volume names its bricks in order; `brick:` volumes list their one
// brick; volumes_on() finds a volume on each of its bricks.
TEST(ClusterConfigTest, StripedVolumeListsItsBricksInOrder) {
  ClusterConfig c;
  auto errors = check(R"(cluster: {name: demo}
bricks:
  - {name: b0, host: 127.0.0.1, port: 7100, store: {path: /srv/b0.store, size: 1G}}
  - {name: b1, host: 127.0.0.1, port: 7101, store: {path: /srv/b1.store, size: 1G}}
volumes:
  - {name: s0, size: 3G, bricks: [b1, b0], layout: stripe, base: 0}
  - {name: v1, size: 2M, brick: b0, base: 0x60000000}
gateways: []
)",
                      &c);
  ASSERT_TRUE(errors.empty()) << dump(errors);
  ASSERT_EQ(c.volumes.size(), 2u);
  EXPECT_EQ(c.volumes[0].bricks, (std::vector<std::string>{"b1", "b0"}));
  EXPECT_EQ(c.volumes[0].brick, "b1");
  EXPECT_EQ(c.volumes[0].layout, Layout::kStripe);
  EXPECT_EQ(c.volumes[1].bricks, (std::vector<std::string>{"b0"}));
  EXPECT_EQ(c.volumes[1].layout, Layout::kSingle);
  EXPECT_EQ(c.volumes_on("b0").size(), 2u);
  EXPECT_EQ(c.volumes_on("b1").size(), 1u);
  // s0's share of each brick is [0, 1.5G): a volume at 1G on b0 overlaps it.
  expect_one(R"(cluster: {name: demo}
bricks:
  - {name: b0, host: 127.0.0.1, port: 7100, store: {path: /srv/b0.store, size: 1G}}
  - {name: b1, host: 127.0.0.1, port: 7101, store: {path: /srv/b1.store, size: 1G}}
volumes:
  - {name: s0, size: 3G, bricks: [b1, b0], layout: stripe, base: 0}
  - {name: v1, size: 2M, brick: b0, base: 0x40000000}
gateways: []
)",
             7, 43, "volumes[1].base: range [0x40000000, 0x40200000) overlaps volume 's0' [0x0, 0x60000000) on brick 'b0'");
}

}  // namespace
}  // namespace pbrick
