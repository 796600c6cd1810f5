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
    Entry e = entries_[head_++];
    if (e.sync) {
      channel.submit_sync(e.op);
    } else {
      channel.submit(e.op);
    }
  }
  compact();
}

void ChannelBacklog::fail_all(int status) {
  // Only what waits now: what a completion queues waits for the next feed.
  for (size_t end = entries_.size(); head_ < end;) {
    DataChannel::Op* op = entries_[head_++].op;
    op->done(op, status);
  }
  compact();
}

void ChannelBacklog::compact() {
  if (head_ == entries_.size()) {
    entries_.clear();
    head_ = 0;
  }
}

}  // namespace pbrick
