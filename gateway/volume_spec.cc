#include "gateway/volume_spec.h"

#include "config/cluster_config.h"
#include "common/units.h"

namespace pbrick {

Status VolumeSpec::complete_from_config(const std::string& path, const std::string& name) {
  auto cluster = load_cluster_config(path);
  if (!cluster) return cluster.error();
  const VolumeConfig* v = cluster->find_volume(name);
  if (v == nullptr) return Error(ENOENT, "no volume named '" + name + "' in " + path);
  const BrickConfig* b = cluster->find_brick(v->brick);
  if (!transport) transport = b->transport;
  if (!persistence) persistence = b->persistence;
  if (!target) target = Endpoint{b->host, static_cast<uint16_t>(b->port)};
  if (size == 0) size = v->size;
  if (!base) base = v->base;
  if (key_file.empty()) key_file = b->key_file;
  if (!queues) queues = v->queues;
  if (!depth) depth = v->depth;
  if (!max_mapped) max_mapped = v->max_mapped;
  return Status::Ok();
}

Status VolumeSpec::finalize(uint32_t default_queues, uint32_t default_depth, bool plugin_style) {
  auto name = [plugin_style](const char* key) {
    return plugin_style ? std::string(key) + "=" : "--" + std::string(key);
  };
  if (!target) return Error(EINVAL, plugin_style ? "target=HOST:PORT is required" : "--target is required");
  if (size == 0) return Error(EINVAL, name("size") + " is required");
  if (size % 4096 != 0) return Error(EINVAL, name("size") + " must be a multiple of 4096");
  if (!base) base = 0;
  if (*base % proto::kBlockSize != 0) return Error(EINVAL, name("base") + " must be 2 MiB aligned");
  if (!queues) queues = default_queues;
  if (!depth) depth = default_depth;
  if (max_mapped && *max_mapped != 0 && *max_mapped < kMinMaxMapped) {
    return Error(EINVAL, name("max-mapped") + " must be 0 (no bound) or at least " + std::to_string(kMinMaxMapped));
  }
  return Status::Ok();
}

Result<VolumeOptions> VolumeSpec::volume_options() const {
  VolumeOptions vo;
  vo.brick.endpoint = *target;
  vo.brick.transport = transport.value_or(Transport::kTcp);
  Persistence p = persistence.value_or(vo.brick.transport == Transport::kRdma ? Persistence::kRpc
                                                                               : Persistence::kSyncRead);
  // The persistence method is what the connections offer in HELLO; a brick
  // that cannot honour sync-read over RDMA refuses it there.
  vo.brick.features = p == Persistence::kRpc ? proto::kFeaturePersistRpc : proto::kFeatureSyncRead;
  vo.size = size;
  vo.base = base.value_or(0);
  vo.io_timeout_ms = timeout_ms;
  vo.max_mapped = max_mapped.value_or(0);
  if (!key_file.empty()) {
    auto key = load_key_file(key_file);
    if (!key) return key.error().wrap("key-file");
    vo.brick.key = std::move(*key);
  }
  return vo;
}

}  // namespace pbrick
