#include "common/client.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <string>

namespace pbrick {
namespace {

TEST(EndpointTest, HostPortAndBracketedV6RoundTrip) {
  auto e = parse_endpoint("10.0.0.1:7000", "--target");
  ASSERT_TRUE(e.ok()) << e.error().message();
  EXPECT_EQ(e->host, "10.0.0.1");
  EXPECT_EQ(e->port, 7000);
  EXPECT_FALSE(e->is_unix());
  EXPECT_EQ(e->to_string(), "10.0.0.1:7000");
  auto v6 = parse_endpoint("[fd00::1]:7000", "--target");
  ASSERT_TRUE(v6.ok()) << v6.error().message();
  EXPECT_EQ(v6->host, "fd00::1");
  EXPECT_EQ(v6->to_string(), "[fd00::1]:7000");
}

TEST(EndpointTest, AUnixSocketIsAnAbsolutePath) {
  auto e = parse_endpoint("unix:/run/pbrick/b0.sock", "--listen");
  ASSERT_TRUE(e.ok()) << e.error().message();
  EXPECT_TRUE(e->is_unix());
  EXPECT_EQ(e->unix_path, "/run/pbrick/b0.sock");
  EXPECT_EQ(e->to_string(), "unix:/run/pbrick/b0.sock");
  sockaddr_un sun = unix_address(*e);
  EXPECT_EQ(sun.sun_family, AF_UNIX);
  EXPECT_STREQ(sun.sun_path, "/run/pbrick/b0.sock");
}

TEST(EndpointTest, BadAddressesNameTheFlagAndWhy) {
  struct Case {
    std::string text, why;
  };
  const std::string longest(sizeof(sockaddr_un::sun_path) - 1, 'p');
  for (const Case& c : {Case{"unix:b0.sock", "expected unix:/ABSOLUTE/PATH"},
                        Case{"unix:", "expected unix:/ABSOLUTE/PATH"},
                        Case{"unix:/" + longest, "a unix socket's path has at most 107 bytes"},
                        Case{"nowhere", "expected HOST:PORT"}, Case{"h:0", "port must be 1..65535"},
                        Case{":7000", "empty host"}}) {
    auto e = parse_endpoint(c.text, "--target");
    ASSERT_FALSE(e.ok()) << c.text;
    EXPECT_EQ(e.error().errnum(), EINVAL);
    EXPECT_EQ(e.error().context(), "--target: invalid address '" + c.text + "': " + c.why);
  }
  EXPECT_TRUE(parse_endpoint("unix:" + ("/" + longest.substr(1)), "--target").ok()) << "107 bytes fit";
}

}  // namespace
}  // namespace pbrick
