#include "gateway/data_channel.h"

#include "gateway/rdma_channel.h"
#include "gateway/tcp_channel.h"

namespace pbrick {

std::unique_ptr<DataChannel> DataChannel::Create(Transport transport, uint32_t depth) {
  if (transport == Transport::kRdma) return std::make_unique<RdmaChannel>(depth);
  return std::make_unique<TcpChannel>(depth);
}

void ChannelBacklog::feed(DataChannel& channel) {
  while (!empty() && channel.connected() && !channel.tearing_down() && !channel.full()) {
    Entry e = entries_.pop();
    if (e.sync) {
      channel.submit_sync(e.op);
    } else {
      channel.submit(e.op);
    }
  }
}

void ChannelBacklog::fail_all(int status) {
  // Only what waits now: what a completion queues waits for the next feed.
  for (size_t n = entries_.size(); n > 0; n--) {
    DataChannel::Op* op = entries_.pop().op;
    op->done(op, status);
  }
}

}  // namespace pbrick
