#include "gateway/device_conf.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <string_view>

#include "common/client.h"
#include "common/layout.h"
#include "common/transport.h"
#include "common/units.h"
#include "config/cluster_config.h"

namespace pbrick {

Status save_device_conf(const std::string& path, const AttachParams& p) {
  // Lists are saved comma-separated and values one per line: a path with a
  // comma or a newline would come back as other paths.
  for (const std::string& k : p.brick_key_files) {
    if (k.find_first_of(",\n") != std::string::npos) {
      return Error(EINVAL, "key file '" + k + "': a path with a comma or a newline cannot be saved in " + path);
    }
  }
  for (const char* text : {p.key_file.c_str(), p.label_name.c_str()}) {
    if (std::string_view(text).find('\n') != std::string_view::npos) {
      return Error(EINVAL, "'" + std::string(text) + "': a value with a newline cannot be saved in " + path);
    }
  }
  const std::string targets = p.targets_string();
  if (std::count(targets.begin(), targets.end(), ',') + 1 != static_cast<std::ptrdiff_t>(p.targets.size()) ||
      targets.find('\n') != std::string::npos) {
    return Error(EINVAL, "brick addresses '" + targets + "': one with a comma or a newline cannot be saved in " + path);
  }
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return errno_error("writing " + tmp);
  std::fprintf(f,
               "target=%s\nsize=%llu\nbase=%llu\nkey_file=%s\nqueues=%u\ndepth=%u\nlogical_block_size=%u\n"
               "timeout=%u\n",
               p.targets_string().c_str(), static_cast<unsigned long long>(p.size),
               static_cast<unsigned long long>(p.base.value_or(0)), p.key_file.c_str(), p.queues.value_or(0),
               p.depth.value_or(0), p.logical_block_size, p.timeout_ms);
  std::fprintf(f, "transport=%s\n", transport_name(p.transport.value_or(Transport::kTcp)));
  std::fprintf(f, "layout=%s\n", layout_name(p.layout.value_or(Layout::kSingle)));
  if (p.copies) std::fprintf(f, "copies=%u\n", *p.copies);
  if (p.leg_timeout_ms) std::fprintf(f, "leg_timeout=%u\n", *p.leg_timeout_ms);
  if (p.resync_mib_per_s) std::fprintf(f, "resync_rate=%u\n", *p.resync_mib_per_s);
  // By place: an empty entry is a brick without a key of its own, and keeps
  // the places of the ones after it.
  std::string keys;
  for (size_t i = 0; i < p.brick_key_files.size(); i++) keys += (i == 0 ? "" : ",") + p.brick_key_files[i];
  if (!p.brick_key_files.empty()) std::fprintf(f, "brick_key_files=%s\n", keys.c_str());
  if (p.persistence) std::fprintf(f, "persistence=%s\n", persistence_name(*p.persistence));
  std::fprintf(f, "name=%s\nread_only=%d\n", p.label_name.c_str(), p.read_only ? 1 : 0);
  if (p.degraded) std::fprintf(f, "degraded=1\n");
  if (!p.chain_syncs.value_or(true)) std::fprintf(f, "chained_syncs=0\n");
  if (p.pin_queues.value_or(false)) std::fprintf(f, "pin_queues=1\n");
  if (p.poll_us.value_or(0) != 0) std::fprintf(f, "poll_us=%u\n", *p.poll_us);
  if (p.volume_uuid) std::fprintf(f, "volume=%s\n", format_uuid(*p.volume_uuid).c_str());
  if (p.max_mapped) std::fprintf(f, "max_mapped=%llu\n", static_cast<unsigned long long>(*p.max_mapped));
  // The errno of the first step that failed, so the error names its cause.
  int err = std::ferror(f) != 0 ? (errno != 0 ? errno : EIO) : 0;
  if (std::fclose(f) != 0 && err == 0) err = errno;
  if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::remove(tmp.c_str());
    return Error(err, "writing " + path);
  }
  return Status::Ok();
}

Result<AttachParams> load_device_conf(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Error(ENOENT, path + " (written by attach) is missing");
  std::map<std::string, std::string, std::less<>> kv;
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  auto what = [&](std::string_view key) { return path + ": " + std::string(key); };
  auto has = [&](std::string_view key) { return kv.find(key) != kv.end(); };
  auto u64 = [&](std::string_view key) -> Result<uint64_t> {
    auto it = kv.find(key);
    return parse_u64(it == kv.end() ? std::string_view() : std::string_view(it->second), what(key));
  };
  auto u32 = [&](std::string_view key) -> Result<uint32_t> {
    auto v = u64(key);
    if (!v) return v.error();
    if (*v > UINT32_MAX) return Error(EINVAL, what(key) + " is out of range");
    return static_cast<uint32_t>(*v);
  };
  // Written as 0 or 1; a missing one is `absent`.
  auto flag = [&](std::string_view key, bool absent) -> Result<bool> {
    auto it = kv.find(key);
    if (it == kv.end()) return absent;
    if (it->second == "0" || it->second == "1") return it->second == "1";
    return Error(EINVAL, what(key) + " must be 0 or 1, not \"" + it->second + "\"");
  };

  AttachParams p;
  PBRICK_TRY(p.add_targets(kv["target"], what("target")));
  auto size = u64("size"), base = u64("base");
  auto queues = u32("queues"), depth = u32("depth"), lbs = u32("logical_block_size"), timeout = u32("timeout");
  for (auto* r : {&size, &base}) {
    if (!*r) return r->error();
  }
  for (auto* r : {&queues, &depth, &lbs, &timeout}) {
    if (!*r) return r->error();
  }
  p.size = *size;
  p.base = *base;
  p.queues = *queues;
  p.depth = *depth;
  p.logical_block_size = *lbs;
  p.timeout_ms = *timeout;
  p.key_file = kv["key_file"];
  p.label_name = kv["name"];
  for (size_t start = 0; has("brick_key_files");) {
    const std::string& keys = kv["brick_key_files"];
    size_t comma = keys.find(',', start);
    p.brick_key_files.push_back(keys.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }

  auto read_only = flag("read_only", false), degraded = flag("degraded", false);
  auto chain_syncs = flag("chained_syncs", true), pin_queues = flag("pin_queues", false);
  for (auto* r : {&read_only, &degraded, &chain_syncs, &pin_queues}) {
    if (!*r) return r->error();
  }
  p.read_only = *read_only;
  p.degraded = *degraded;
  p.chain_syncs = *chain_syncs;
  p.pin_queues = *pin_queues;

  // A setting attach writes only when it was given: unset when absent.
  auto optional_u32 = [&](std::string_view key, std::optional<uint32_t>* out) -> Status {
    if (!has(key)) return Status::Ok();
    auto v = u32(key);
    if (!v) return v.error();
    *out = *v;
    return Status::Ok();
  };
  if (has("volume")) {
    auto uuid = parse_uuid(kv["volume"], what("volume"));
    if (!uuid) return uuid.error();
    p.volume_uuid = *uuid;
  }
  PBRICK_TRY(optional_u32("poll_us", &p.poll_us));
  if (p.poll_us.value_or(0) > kMaxPollUs) {
    return Error(EINVAL, what("poll_us") + " must be 0.." + std::to_string(kMaxPollUs));
  }
  PBRICK_TRY(optional_u32("leg_timeout", &p.leg_timeout_ms));
  PBRICK_TRY(optional_u32("resync_rate", &p.resync_mib_per_s));
  PBRICK_TRY(optional_u32("copies", &p.copies));
  if (has("max_mapped")) {
    auto mm = u64("max_mapped");
    if (!mm) return mm.error();
    p.max_mapped = *mm;
  }
  if (has("layout")) {
    auto l = parse_layout(kv["layout"], what("layout"));
    if (!l) return l.error();
    p.layout = *l;
  }
  if (has("transport")) {
    auto t = parse_transport(kv["transport"], what("transport"));
    if (!t) return t.error();
    p.transport = *t;
  }
  if (has("persistence")) {
    auto ps = parse_persistence(kv["persistence"], what("persistence"));
    if (!ps) return ps.error();
    p.persistence = *ps;
  }
  return p;
}

}  // namespace pbrick
