#include "gateway/data_channel.h"

#include "gateway/rdma_channel.h"
#include "gateway/tcp_channel.h"

namespace pbrick {

std::unique_ptr<DataChannel> DataChannel::Create(Transport transport, uint32_t depth) {
  if (transport == Transport::kRdma) return std::make_unique<RdmaChannel>(depth);
  return std::make_unique<TcpChannel>(depth);
}

}  // namespace pbrick
