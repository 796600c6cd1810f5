#include "common/rdma.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace pbrick {
namespace {

// A one-sided op's completion status decides what the gateway does with it:
// map the block again (EKEYREJECTED), retry on a new connection (ECONNRESET,
// ETIMEDOUT), or nothing (0). No status of the transport may read as EIO,
// the brick's word for "could not make the data durable".
TEST(ErrnoFromWc, TransportFailuresAreConnectionErrorsNeverEio) {
  EXPECT_EQ(rdma::errno_from_wc(IBV_WC_SUCCESS), 0);
  EXPECT_EQ(rdma::errno_from_wc(IBV_WC_REM_ACCESS_ERR), EKEYREJECTED);
  EXPECT_EQ(rdma::errno_from_wc(IBV_WC_WR_FLUSH_ERR), ECONNRESET);
  EXPECT_EQ(rdma::errno_from_wc(IBV_WC_RETRY_EXC_ERR), ETIMEDOUT);
  for (ibv_wc_status st : {IBV_WC_LOC_LEN_ERR, IBV_WC_LOC_QP_OP_ERR, IBV_WC_LOC_PROT_ERR, IBV_WC_BAD_RESP_ERR,
                           IBV_WC_RESP_TIMEOUT_ERR, IBV_WC_FATAL_ERR, IBV_WC_GENERAL_ERR, IBV_WC_REM_OP_ERR}) {
    EXPECT_EQ(rdma::errno_from_wc(st), ECONNRESET) << ibv_wc_status_str(st);
  }
}

}  // namespace
}  // namespace pbrick
