#include "gateway/volume_spec.h"

#include "config/cluster_config.h"
#include "common/units.h"

namespace pbrick {

Status VolumeSpec::add_targets(std::string_view list, std::string_view what) {
  for (size_t start = 0;;) {
    size_t comma = list.find(',', start);
    std::string_view one = list.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    auto ep = parse_endpoint(one, what);
    if (!ep) return ep.error();
    targets.push_back(*ep);
    if (comma == std::string_view::npos) return Status::Ok();
    start = comma + 1;
  }
}

std::string VolumeSpec::targets_string() const {
  std::string out;
  for (const Endpoint& e : targets) out += (out.empty() ? "" : ",") + e.to_string();
  return out;
}

Status VolumeSpec::complete_from_config(const std::string& path, const std::string& name) {
  auto cluster = load_cluster_config(path);
  if (!cluster) return cluster.error();
  const VolumeConfig* v = cluster->find_volume(name);
  if (v == nullptr) return Error(ENOENT, "no volume named '" + name + "' in " + path);
  std::vector<const BrickConfig*> bricks;
  for (const std::string& b : v->brick_names()) bricks.push_back(cluster->find_brick(b));
  // A loaded file is validated: the volume has its bricks, and they exist.
  const BrickConfig* first = bricks.front();
  if (!transport) transport = first->transport;
  if (!persistence) persistence = first->persistence;
  bool given = !targets.empty();
  if (brick_key_files.empty()) {
    for (const BrickConfig* b : bricks) brick_key_files.push_back(b->key_file);
  }
  if (!given) {
    for (const BrickConfig* b : bricks) targets.push_back(b->endpoint());
  }
  if (!layout) layout = v->layout;
  if (!copies && v->layout == Layout::kMirror) copies = v->copies;
  if (label_name.empty()) label_name = v->name;
  if (size == 0) size = v->size;
  if (!base) base = v->base;
  if (!queues) queues = v->queues;
  if (!depth) depth = v->depth;
  if (!max_mapped) max_mapped = v->max_mapped;
  if (!poll_us) poll_us = v->poll_us;
  if (!pin_queues) pin_queues = v->pin_queues;
  if (!chain_syncs) chain_syncs = v->chained_syncs;
  return Status::Ok();
}

Status VolumeSpec::finalize(uint32_t default_queues, uint32_t default_depth, bool plugin_style) {
  auto name = [plugin_style](const char* key) {
    return plugin_style ? std::string(key) + "=" : "--" + std::string(key);
  };
  if (targets.empty()) return Error(EINVAL, plugin_style ? "target=HOST:PORT is required" : "--target is required");
  if (!layout) layout = Layout::kSingle;
  if (*layout == Layout::kSingle && targets.size() > 1) {
    return Error(EINVAL, std::to_string(targets.size()) + " bricks given (" + targets_string() + "): " +
                             name("layout") + (plugin_style ? "stripe" : " stripe") + " spreads a volume over them, " +
                             name("layout") + (plugin_style ? "mirror" : " mirror") + " copies it");
  }
  if (*layout == Layout::kStripe && targets.size() < 2) {
    return Error(EINVAL, name("layout") + (plugin_style ? "" : " ") + "stripe takes at least two bricks (" +
                             (plugin_style ? "target=A,B" : "--target A --target B") + ")");
  }
  if (*layout == Layout::kMirror) {
    if (!copies) copies = kMinCopies;
    if (*copies < kMinCopies || *copies > kMaxCopies) {
      return Error(EINVAL, name("copies") + " must be 2 or 3, not " + std::to_string(*copies));
    }
    if (targets.size() < *copies) {
      return Error(EINVAL, name("layout") + (plugin_style ? "" : " ") + "mirror with " + std::to_string(*copies) +
                               " copies takes at least " + std::to_string(*copies) + " bricks, not " +
                               std::to_string(targets.size()) + " (" + targets_string() + ")");
    }
    if (!leg_timeout_ms) leg_timeout_ms = std::min<uint32_t>(5000, timeout_ms / 2);
    if (*leg_timeout_ms >= timeout_ms) {
      return Error(EINVAL, name("leg-timeout") + " (" + std::to_string(*leg_timeout_ms) + " ms) must be shorter than " +
                               name("timeout") + " (" + std::to_string(timeout_ms) + " ms)");
    }
  } else if (copies) {
    return Error(EINVAL, name("copies") + " goes with " + name("layout") + (plugin_style ? "" : " ") + "mirror");
  } else if (leg_timeout_ms) {
    return Error(EINVAL, name("leg-timeout") + " goes with " + name("layout") + (plugin_style ? "" : " ") + "mirror");
  } else if (resync_mib_per_s) {
    return Error(EINVAL, name("resync-rate") + " goes with " + name("layout") + (plugin_style ? "" : " ") + "mirror");
  }
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
  ClientOptions common;
  common.transport = transport.value_or(Transport::kTcp);
  Persistence p = persistence.value_or(common.transport == Transport::kRdma ? Persistence::kRpc
                                                                              : Persistence::kSyncRead);
  // The persistence method is what the connections offer in HELLO; a brick
  // that cannot honour sync-read over RDMA refuses it there.
  common.features = p == Persistence::kRpc ? proto::kFeaturePersistRpc : proto::kFeatureSyncRead;
  vo.size = size;
  vo.base = base.value_or(0);
  vo.io_timeout_ms = timeout_ms;
  vo.leg_timeout_ms = leg_timeout_ms.value_or(std::min<uint32_t>(5000, timeout_ms / 2));
  vo.resync_mib_per_s = resync_mib_per_s.value_or(0);
  vo.layout = layout.value_or(Layout::kSingle);
  vo.copies = vo.layout == Layout::kMirror ? copies.value_or(kMinCopies) : 1;
  vo.name = label_name;
  vo.read_only = read_only;
  vo.degraded = degraded;
  vo.max_mapped = max_mapped.value_or(0);
  vo.chain_syncs = chain_syncs.value_or(true);
  for (size_t i = 0; i < targets.size(); i++) {
    ClientOptions o = common;
    o.endpoint = targets[i];
    const std::string& key_path = !key_file.empty() ? key_file : i < brick_key_files.size() ? brick_key_files[i] : "";
    if (!key_path.empty()) {
      auto key = load_key_file(key_path);
      if (!key) return key.error().wrap("key-file");
      o.key = std::move(*key);
    }
    vo.bricks.push_back(std::move(o));
  }
  vo.brick = vo.bricks.front();
  return vo;
}

}  // namespace pbrick
