// Tests for size and address parsing and formatting.

#include "common/units.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace pbrick {
namespace {

template <typename T>
int err_of(const Result<T>& r) {
  return r.ok() ? 0 : r.error().errnum();
}

TEST(ParseSize, AcceptsSuffixes) {
  EXPECT_EQ(*parse_size("0", "--size"), 0u);
  EXPECT_EQ(*parse_size("4096", "--size"), 4096u);
  EXPECT_EQ(*parse_size("512M", "--size"), 512ull << 20);
  EXPECT_EQ(*parse_size("4G", "--size"), 4ull << 30);
  EXPECT_EQ(*parse_size("1GiB", "--size"), 1ull << 30);
  EXPECT_EQ(*parse_size("2m", "--size"), 2ull << 20);
  EXPECT_EQ(*parse_size("3KB", "--size"), 3ull << 10);
  EXPECT_EQ(*parse_size("1T", "--size"), 1ull << 40);
  EXPECT_EQ(*parse_size("20P", "--size"), 20ull << 50);
  EXPECT_EQ(*parse_size("16383P", "--size"), 16383ull << 50);
  EXPECT_EQ(*parse_size("100B", "--size"), 100u);
}

TEST(ParseSize, RejectsMalformedWithEinval) {
  for (const char* text : {"", "12X", "M", "-1", "+1", " 1", "1 ", "1.5G", "0x10", "1GB2", "1Gi",
                           "1Bi", "1KiBB", "G1"}) {
    auto r = parse_size(text, "--size");
    EXPECT_EQ(err_of(r), EINVAL) << "'" << text << "'";
  }
}

TEST(ParseSize, ErrorNamesTheFlag) {
  auto r = parse_size("12X", "--capacity");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().context().find("--capacity"), std::string::npos);
  EXPECT_NE(r.error().context().find("12X"), std::string::npos);
}

TEST(ParseSize, FractionsAndHexGetTheirOwnMessage) {
  auto r = parse_size("1.5G", "--size");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().context().find("fractions are not accepted"), std::string::npos) << r.error().context();
  r = parse_size("0x40000000", "--size");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().context().find("not hexadecimal"), std::string::npos) << r.error().context();
}

TEST(ParseSize, OverflowIsErange) {
  EXPECT_EQ(err_of(parse_size("99999999999999999999", "--size")), ERANGE);
  EXPECT_EQ(err_of(parse_size("16384P", "--size")), ERANGE);  // 2^64
  EXPECT_EQ(err_of(parse_size("20000P", "--size")), ERANGE);
  EXPECT_EQ(err_of(parse_size("17179869184G", "--size")), ERANGE);  // 2^34 GiB = 2^64
  EXPECT_EQ(*parse_size("18446744073709551615", "--size"), UINT64_MAX);
}

TEST(ParseU64, DecimalAndHex) {
  EXPECT_EQ(*parse_u64("0", "vaddr"), 0u);
  EXPECT_EQ(*parse_u64("2097152", "vaddr"), 2097152u);
  EXPECT_EQ(*parse_u64("0x200000", "vaddr"), 0x200000u);
  EXPECT_EQ(*parse_u64("0XaBcDeF", "vaddr"), 0xabcdefu);
  EXPECT_EQ(*parse_u64("0xffffffffffffffff", "vaddr"), UINT64_MAX);
  EXPECT_EQ(*parse_u64("18446744073709551615", "vaddr"), UINT64_MAX);
}

TEST(ParseU64, InvalidIsEinval) {
  for (const char* text : {"", "0x", "x10", "12a", "0xg", "-5", "+5", " 5", "5 ", "1e6", "0b101"}) {
    EXPECT_EQ(err_of(parse_u64(text, "vaddr")), EINVAL) << "'" << text << "'";
  }
}

TEST(ParseU64, OverflowIsErange) {
  EXPECT_EQ(err_of(parse_u64("18446744073709551616", "vaddr")), ERANGE);
  EXPECT_EQ(err_of(parse_u64("0x10000000000000000", "vaddr")), ERANGE);
  EXPECT_EQ(err_of(parse_u64("99999999999999999999999", "vaddr")), ERANGE);
}

TEST(FormatSize, UsesBinaryUnits) {
  EXPECT_EQ(format_size(0), "0 B");
  EXPECT_EQ(format_size(1023), "1023 B");
  EXPECT_EQ(format_size(1024), "1.0 KiB");
  EXPECT_EQ(format_size(kBlockSize), "2.0 MiB");
  EXPECT_EQ(format_size(1ull << 30), "1.0 GiB");
  EXPECT_EQ(format_size(3ull << 29), "1.5 GiB");
  EXPECT_EQ(format_size(UINT64_MAX), "16.0 EiB");
}

TEST(FormatHex, LowerCaseWithPrefix) {
  EXPECT_EQ(format_hex(0), "0x0");
  EXPECT_EQ(format_hex(0x200000), "0x200000");
  EXPECT_EQ(format_hex(0xABCDEF), "0xabcdef");
  EXPECT_EQ(format_hex(UINT64_MAX), "0xffffffffffffffff");
}

TEST(FormatHex, RoundTripsThroughParseU64) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, kBlockSize, uint64_t{0x123456789abcdef0}, UINT64_MAX}) {
    EXPECT_EQ(*parse_u64(format_hex(v), "x"), v);
  }
}

}  // namespace
}  // namespace pbrick
