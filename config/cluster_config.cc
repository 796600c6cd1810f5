#include "config/cluster_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include "common/label_area.h"
#include "common/unique_fd.h"
#include "common/units.h"

namespace pbrick {
namespace {

// A config file is a few kilobytes; anything this large is a mistake (a store
// image passed by accident) and should not be slurped into memory.
constexpr off_t kMaxConfigBytes = 16 << 20;

constexpr uint32_t kMaxQueues = 64;
constexpr uint32_t kMaxDepth = 1024;
constexpr size_t kMaxNameLength = 63;
constexpr uint16_t kDefaultPort = 7100;

SourcePos to_pos(const YAML::Mark& mark) {
  if (mark.is_null()) return {};
  return {mark.line + 1, mark.column + 1};
}

std::string quote(std::string_view s) { return "'" + std::string(s) + "'"; }

// Expands ${NAME} and ${NAME:-default} in a scalar, so one file serves hosts
// that differ only in, say, a state directory. "$$" is a literal "$". An unset
// variable without a default is an error (naming it), never an empty string.
// A default is expanded in turn when it is used (${A:-${B:-x}}).
Result<std::string> expand_env(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); i++) {
    if (text[i] != '$') {
      out += text[i];
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '$') {
      out += '$';
      i++;
      continue;
    }
    if (i + 1 >= text.size() || text[i + 1] != '{') {
      out += '$';
      continue;
    }
    // The matching brace: a default may hold ${...} of its own.
    size_t close = i + 2;
    for (int depth = 1; close < text.size(); close++) {
      if (text[close] == '$' && close + 1 < text.size() && text[close + 1] == '{') {
        depth++;
        close++;
      } else if (text[close] == '}' && --depth == 0) {
        break;
      }
    }
    if (close >= text.size()) return Error(EINVAL, "unterminated ${ in " + quote(text));
    std::string expr = text.substr(i + 2, close - i - 2);
    std::string name = expr, fallback;
    bool has_default = false;
    if (size_t dash = expr.find(":-"); dash != std::string::npos) {
      name = expr.substr(0, dash);
      fallback = expr.substr(dash + 2);
      has_default = true;
    }
    bool valid = !name.empty();
    for (char c : name) valid = valid && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
    if (!valid) return Error(EINVAL, "bad variable name " + quote(name) + " in " + quote(text));
    const char* value = std::getenv(name.c_str());
    if (value != nullptr && *value != '\0') {
      out += value;
    } else if (has_default) {
      auto expanded = expand_env(fallback);
      if (!expanded) return expanded.error();
      out += *expanded;
    } else {
      return Error(EINVAL, "environment variable " + name + " is not set (use ${" + name + ":-default})");
    }
    i = close;
  }
  return out;
}

const char* node_kind(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return "a scalar";
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Undefined: break;
  }
  return "an undefined node";
}

// Optimal-string-alignment distance, for "did you mean" hints on typos such
// as "stroe" (one transposition away from "store").
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); i++) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); j++) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); i++) {
    for (size_t j = 1; j <= b.size(); j++) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

template <typename E>
struct EnumEntry {
  std::string_view name;
  E value;
};

constexpr EnumEntry<Transport> kTransports[] = {{"tcp", Transport::kTcp}, {"rdma", Transport::kRdma}};
constexpr EnumEntry<DdioMode> kDdioModes[] = {
    {"off", DdioMode::kOff}, {"on", DdioMode::kOn}, {"unmanaged", DdioMode::kUnmanaged}};
constexpr EnumEntry<Persistence> kPersistences[] = {{"sync-read", Persistence::kSyncRead},
                                                    {"rpc", Persistence::kRpc}};
constexpr EnumEntry<Frontend> kFrontends[] = {{"ublk", Frontend::kUblk}, {"nbd", Frontend::kNbd}};
constexpr EnumEntry<bool> kBooleans[] = {{"true", true}, {"false", false}};
constexpr EnumEntry<Layout> kLayouts[] = {{"single", Layout::kSingle}, {"stripe", Layout::kStripe}, {"mirror", Layout::kMirror}};

template <typename E, size_t N>
const char* enum_name(const EnumEntry<E> (&table)[N], E value) {
  for (const auto& entry : table) {
    if (entry.value == value) return entry.name.data();
  }
  return "?";
}

template <typename E, size_t N>
std::string enum_choices(const EnumEntry<E> (&table)[N]) {
  std::string out;
  for (size_t i = 0; i < N; i++) {
    if (i > 0) out += i + 1 == N ? " or " : ", ";
    out += table[i].name;
  }
  return out;
}

// Records where each document and its root node start, and nothing else.
class DocumentScan : public YAML::EventHandler {
 public:
  struct Document {
    YAML::Mark start;
    YAML::Mark root = YAML::Mark::null_mark();
  };
  std::vector<Document> documents;

  void OnDocumentStart(const YAML::Mark& mark) override { documents.push_back({mark}); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override {
    node(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnMapEnd() override {}

 private:
  void node(const YAML::Mark& mark) {
    if (!documents.empty() && documents.back().root.is_null()) documents.back().root = mark;
  }
};

std::string index_path(const std::string& list, size_t i) { return list + "[" + std::to_string(i) + "]"; }
std::string join_path(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

struct Field {
  YAML::Node key;
  YAML::Node value;
};
using Fields = std::map<std::string, Field>;

struct KeySpec {
  std::vector<std::string_view> allowed;
  // Extra words for a known-confusing key, e.g. volumes[].bricks.
  std::map<std::string_view, std::string_view> hints;
  // Accept and ignore keys starting with "x-" (top level only): places to
  // define YAML anchors for merge keys, as in docker-compose files.
  bool extensions = false;
};

// Turns YAML nodes into ClusterConfig fields, recording every problem instead
// of stopping. Each getter returns whether it stored a value; on failure the
// key path goes into config.unparsed so validation does not pile on.
class Parser {
 public:
  Parser(const std::string& file, ClusterConfig* config, std::vector<ConfigError>* errors)
      : file_(file), config_(config), errors_(errors) {}

  void error(SourcePos pos, std::string path, std::string message) {
    errors_->push_back(ConfigError{file_, pos, std::move(path), std::move(message)});
  }

  void parse_document(const YAML::Node& root) {
    if (root.IsNull()) {
      error({1, 1}, "", "empty configuration: expected the keys cluster, bricks, volumes and gateways");
      config_->unparsed.insert("cluster");
      config_->unparsed.insert("bricks");
      return;
    }
    static const KeySpec kTop{{"cluster", "bricks", "volumes", "gateways"}, {}, true};
    SourcePos top = to_pos(root.Mark());
    auto fields = map_fields(root, "", top, kTop);
    if (!fields) {
      config_->unparsed.insert("cluster");
      config_->unparsed.insert("bricks");
      return;
    }

    if (auto it = fields->find("cluster"); it == fields->end()) {
      missing(top, "cluster");
    } else {
      parse_cluster(it->second);
    }
    if (auto it = fields->find("bricks"); it == fields->end()) {
      missing(top, "bricks");
    } else {
      parse_list(it->second, "bricks", [this](const YAML::Node& n, const std::string& p) { parse_brick(n, p); });
    }
    if (auto it = fields->find("volumes"); it != fields->end()) {
      parse_list(it->second, "volumes", [this](const YAML::Node& n, const std::string& p) { parse_volume(n, p); });
    }
    if (auto it = fields->find("gateways"); it != fields->end()) {
      parse_list(it->second, "gateways", [this](const YAML::Node& n, const std::string& p) { parse_gateway(n, p); });
    }
    // Bricks inherit the cluster key unless they name their own.
    for (size_t i = 0; i < config_->bricks.size(); i++) {
      if (config_->bricks[i].key_file.empty() && !config_->positions.count(index_path("bricks", i) + ".key_file")) {
        config_->bricks[i].key_file = config_->cluster.key_file;
      }
    }
  }

 private:
  SourcePos value_pos(const Field& f) const {
    // yaml-cpp places an implicit null ("key:" with nothing after it) at the
    // start of the next token, often the next line; the key is the better spot.
    if (f.value.IsNull() || f.value.Mark().is_null()) return to_pos(f.key.Mark());
    return to_pos(f.value.Mark());
  }

  void missing(SourcePos where, const std::string& path) {
    size_t cut = path.find_last_of('.');
    std::string key = cut == std::string::npos ? path : path.substr(cut + 1);
    error(where, path, "missing required key " + quote(key));
    config_->unparsed.insert(path);
  }

  void invalid(SourcePos pos, const std::string& path, std::string message) {
    error(pos, path, std::move(message));
    config_->unparsed.insert(path);
  }

  // Collects the entries of a map, following YAML merge keys ("<<: *defaults",
  // which yaml-cpp leaves to the application); explicit keys win over merged
  // ones. Reports duplicate, non-string and unknown keys.
  void collect(const YAML::Node& node, const std::string& path, const KeySpec& spec, bool merged, int depth,
               Fields* out) {
    std::set<std::string> seen;
    std::vector<YAML::Node> merges;
    for (auto it = node.begin(); it != node.end(); ++it) {
      // Copies, not references: the iterator yields a temporary pair.
      YAML::Node key = it->first;
      YAML::Node value = it->second;
      if (!key.IsScalar()) {
        error(to_pos(key.Mark()), path, "map keys must be plain strings, got " + std::string(node_kind(key)));
        continue;
      }
      std::string name = key.Scalar();
      const bool repeated = !seen.insert(name).second;
      if (repeated) {
        // A merged map is read once per place that merges it: its own
        // duplicates are reported once, where they are written.
        const SourcePos at = to_pos(key.Mark());
        if (!merged || reported_duplicates_.insert({at.line, at.column}).second) {
          error(at, join_path(path, name), "duplicate key " + quote(name));
        }
        continue;
      }
      if (name == "<<") {
        merges.push_back(value);
        continue;
      }
      if (spec.extensions && name.rfind("x-", 0) == 0) continue;
      if (std::find(spec.allowed.begin(), spec.allowed.end(), name) == spec.allowed.end()) {
        unknown_key(key, path, name, spec);
        continue;
      }
      if (merged && out->count(name)) continue;  // the explicit key wins
      (*out)[name] = Field{key, value};
    }
    for (const YAML::Node& merge : merges) {
      if (depth > 8) {
        error(to_pos(merge.Mark()), path, "merge keys nested too deeply");
        break;
      }
      if (merge.IsMap()) {
        collect(merge, path, spec, true, depth + 1, out);
      } else if (merge.IsSequence()) {
        for (const YAML::Node& m : merge) {
          if (m.IsMap()) {
            collect(m, path, spec, true, depth + 1, out);
          } else {
            error(to_pos(m.Mark()), path, "a merge key ('<<') takes a map or a list of maps");
          }
        }
      } else {
        error(to_pos(merge.Mark()), path, "a merge key ('<<') takes a map or a list of maps");
      }
    }
  }

  void unknown_key(const YAML::Node& key, const std::string& path, const std::string& name, const KeySpec& spec) {
    std::string message = "unknown key " + quote(name);
    if (auto hint = spec.hints.find(name); hint != spec.hints.end()) {
      message += " (" + std::string(hint->second) + ")";
    } else {
      std::string_view best;
      size_t best_distance = 3;  // suggest only close matches
      for (std::string_view candidate : spec.allowed) {
        size_t d = edit_distance(name, candidate);
        if (d < best_distance && d < candidate.size()) {
          best = candidate;
          best_distance = d;
        }
      }
      if (!best.empty()) {
        message += " (did you mean " + quote(best) + "?)";
      } else {
        message += " (expected one of: ";
        for (size_t i = 0; i < spec.allowed.size(); i++) {
          message += (i ? ", " : "") + std::string(spec.allowed[i]);
        }
        message += ")";
      }
    }
    error(to_pos(key.Mark()), join_path(path, name), message);
  }

  std::optional<Fields> map_fields(const YAML::Node& node, const std::string& path, SourcePos pos,
                                   const KeySpec& spec) {
    if (!node.IsMap()) {
      invalid(pos, path, "expected a map, got " + std::string(node_kind(node)));
      return std::nullopt;
    }
    Fields fields;
    collect(node, path, spec, false, 0, &fields);
    return fields;
  }

  // The scalar text of key `key` of `fields`, or nullopt (with an error when
  // required or malformed). `parent_pos` locates "missing key" errors.
  std::optional<std::pair<std::string, SourcePos>> scalar(const Fields& fields, std::string_view key,
                                                          const std::string& parent, SourcePos parent_pos,
                                                          bool required) {
    std::string path = join_path(parent, key);
    auto it = fields.find(std::string(key));
    if (it == fields.end()) {
      if (required) missing(parent_pos, path);
      return std::nullopt;
    }
    if (it->second.value.IsNull()) {
      // `key:` with no value (or ~, null) is a mistake, not the default: a
      // template whose variable came out empty must not turn, say,
      // authentication off.
      invalid(value_pos(it->second), path,
              std::string("missing value for ") + (required ? "required " : "") + "key " + quote(key) +
                  (required ? "" : " (leave the key out for its default)"));
      return std::nullopt;
    }
    SourcePos pos = value_pos(it->second);
    config_->positions[path] = pos;
    if (!it->second.value.IsScalar()) {
      invalid(pos, path, "expected a single value, got " + std::string(node_kind(it->second.value)));
      return std::nullopt;
    }
    auto expanded = expand_env(it->second.value.Scalar());
    if (!expanded) {
      invalid(pos, path, expanded.error().context());
      return std::nullopt;
    }
    return std::make_pair(*expanded, pos);
  }

  bool get_string(const Fields& f, std::string_view key, const std::string& parent, SourcePos parent_pos,
                  bool required, std::string* out) {
    auto v = scalar(f, key, parent, parent_pos, required);
    if (!v) return false;
    *out = v->first;
    return true;
  }

  // A units.h error reads "<what>: invalid value 'x': why"; the key path is
  // printed separately, so keep only the part after "<what>: ".
  static std::string strip_what(const Error& e, const std::string& what) {
    const std::string& c = e.context();
    if (c.compare(0, what.size() + 2, what + ": ") == 0) return c.substr(what.size() + 2);
    return c;
  }

  bool get_u64(const Fields& f, std::string_view key, const std::string& parent, SourcePos parent_pos, bool required,
               uint64_t* out) {
    auto v = scalar(f, key, parent, parent_pos, required);
    if (!v) return false;
    std::string path = join_path(parent, key);
    auto n = parse_u64(v->first, path);
    if (!n) {
      invalid(v->second, path,
              n.error().errnum() == ERANGE
                  ? "too large for 64 bits: " + quote(v->first)
                  : "expected an integer (decimal or 0x-prefixed hex), got " + quote(v->first));
      return false;
    }
    *out = *n;
    return true;
  }

  bool get_u32(const Fields& f, std::string_view key, const std::string& parent, SourcePos parent_pos, bool required,
               uint32_t* out) {
    uint64_t value = 0;
    if (!get_u64(f, key, parent, parent_pos, required, &value)) return false;
    if (value > UINT32_MAX) {
      std::string path = join_path(parent, key);
      invalid(config_->positions[path], path, "value " + std::to_string(value) + " is out of range");
      return false;
    }
    *out = static_cast<uint32_t>(value);
    return true;
  }

  bool get_size(const Fields& f, std::string_view key, const std::string& parent, SourcePos parent_pos,
                bool required, uint64_t* out) {
    auto v = scalar(f, key, parent, parent_pos, required);
    if (!v) return false;
    std::string path = join_path(parent, key);
    auto n = parse_size(v->first, path);
    if (!n) {
      invalid(v->second, path, strip_what(n.error(), path));
      return false;
    }
    *out = *n;
    return true;
  }

  template <typename E, size_t N>
  bool get_enum(const Fields& f, std::string_view key, const std::string& parent, SourcePos parent_pos,
                const EnumEntry<E> (&table)[N], E* out) {
    auto v = scalar(f, key, parent, parent_pos, false);
    if (!v) return false;
    for (const auto& entry : table) {
      if (entry.name == v->first) {
        *out = entry.value;
        return true;
      }
    }
    std::string path = join_path(parent, key);
    invalid(v->second, path, "invalid value " + quote(v->first) + " (expected " + enum_choices(table) + ")");
    return false;
  }

  template <typename Fn>
  void parse_list(const Field& field, const std::string& path, Fn parse_item) {
    SourcePos pos = value_pos(field);
    config_->positions[path] = pos;
    if (field.value.IsNull()) return;  // "volumes:" with nothing: an empty list
    if (!field.value.IsSequence()) {
      invalid(pos, path, "expected a list, got " + std::string(node_kind(field.value)));
      return;
    }
    size_t i = 0;
    for (const YAML::Node& item : field.value) parse_item(item, index_path(path, i++));
  }

  void parse_cluster(const Field& field) {
    static const KeySpec kSpec{{"name", "key_file"}, {}};
    SourcePos pos = value_pos(field);
    config_->positions["cluster"] = pos;
    auto f = map_fields(field.value, "cluster", pos, kSpec);
    if (!f) return;
    get_string(*f, "name", "cluster", pos, true, &config_->cluster.name);
    get_string(*f, "key_file", "cluster", pos, false, &config_->cluster.key_file);
  }

  // Each list entry is appended even when it is broken, so indexes in key
  // paths keep matching the file and validation sees every name.
  void parse_brick(const YAML::Node& node, const std::string& path) {
    static const KeySpec kSpec{
        {"name", "host", "port", "socket", "transport", "store", "nic", "persistence", "key_file",
         "max_connections", "max_handshakes"},
        {}};
    static const KeySpec kStore{{"path", "size", "slow"}, {}};
    static const KeySpec kSlow{{"path", "size", "low_watermark", "demote_rate"}, {}};
    static const KeySpec kNic{{"netdev", "rdma_device", "ddio"}, {}};
    BrickConfig& b = config_->bricks.emplace_back();
    b.port = kDefaultPort;
    SourcePos pos = to_pos(node.Mark());
    config_->positions[path] = pos;
    auto f = map_fields(node, path, pos, kSpec);
    if (!f) return;  // map_fields marked the whole entry unparsed
    get_string(*f, "name", path, pos, true, &b.name);
    get_string(*f, "host", path, pos, true, &b.host);
    get_u32(*f, "port", path, pos, false, &b.port);
    get_string(*f, "socket", path, pos, false, &b.socket);
    get_enum(*f, "transport", path, pos, kTransports, &b.transport);
    get_enum(*f, "persistence", path, pos, kPersistences, &b.persistence);
    get_string(*f, "key_file", path, pos, false, &b.key_file);
    get_u32(*f, "max_connections", path, pos, false, &b.max_connections);
    get_u32(*f, "max_handshakes", path, pos, false, &b.max_handshakes);

    std::string store_path = path + ".store";
    if (auto it = f->find("store"); it == f->end() || it->second.value.IsNull()) {
      if (it == f->end()) {
        missing(pos, store_path);
      } else {
        invalid(value_pos(it->second), store_path, "missing value for required key 'store'");
      }
    } else {
      SourcePos spos = value_pos(it->second);
      config_->positions[store_path] = spos;
      if (auto sf = map_fields(it->second.value, store_path, spos, kStore)) {
        get_string(*sf, "path", store_path, spos, true, &b.store.path);
        get_size(*sf, "size", store_path, spos, true, &b.store.size);
        std::string slow_path = store_path + ".slow";
        if (auto st = sf->find("slow"); st != sf->end() && !st->second.value.IsNull()) {
          SourcePos slpos = value_pos(st->second);
          config_->positions[slow_path] = slpos;
          if (auto slf = map_fields(st->second.value, slow_path, slpos, kSlow)) {
            get_string(*slf, "path", slow_path, slpos, true, &b.store.slow_path);
            get_size(*slf, "size", slow_path, slpos, true, &b.store.slow_size);
            get_u64(*slf, "low_watermark", slow_path, slpos, false, &b.store.slow_low_watermark);
            get_size(*slf, "demote_rate", slow_path, slpos, false, &b.store.slow_demote_rate);
          }
        }
      }
    }

    std::string nic_path = path + ".nic";
    if (auto it = f->find("nic"); it != f->end() && !it->second.value.IsNull()) {
      SourcePos npos = value_pos(it->second);
      config_->positions[nic_path] = npos;
      if (auto nf = map_fields(it->second.value, nic_path, npos, kNic)) {
        get_string(*nf, "netdev", nic_path, npos, false, &b.nic.netdev);
        get_string(*nf, "rdma_device", nic_path, npos, false, &b.nic.rdma_device);
        get_enum(*nf, "ddio", nic_path, npos, kDdioModes, &b.nic.ddio);
      }
    }
  }

  void parse_volume(const YAML::Node& node, const std::string& path) {
    static const KeySpec kSpec{
        {"name", "size", "brick", "bricks", "layout", "copies", "base", "queues", "depth", "frontend", "max_mapped",
         "poll_us", "pin_queues", "chained_syncs"},
        {}};
    VolumeConfig& v = config_->volumes.emplace_back();
    SourcePos pos = to_pos(node.Mark());
    config_->positions[path] = pos;
    auto f = map_fields(node, path, pos, kSpec);
    if (!f) return;
    get_string(*f, "name", path, pos, true, &v.name);
    get_size(*f, "size", path, pos, true, &v.size);
    // `brick: NAME` is the one-brick form of `bricks: [NAME, ...]`.
    auto list = f->find("bricks");
    bool has_list = list != f->end() && !list->second.value.IsNull();
    if (get_string(*f, "brick", path, pos, !has_list, &v.brick)) v.bricks = {v.brick};
    if (has_list) {
      std::string bpath = path + ".bricks";
      SourcePos bpos = value_pos(list->second);
      config_->positions[bpath] = bpos;
      if (f->count("brick") != 0) {
        invalid(bpos, bpath, "give either 'brick: NAME' or 'bricks: [NAME, ...]', not both");
      } else {
        v.bricks = get_names(list->second.value, bpath, "brick");
        if (!v.bricks.empty()) v.brick = v.bricks[0];
      }
    }
    get_enum(*f, "layout", path, pos, kLayouts, &v.layout);
    uint32_t copies = 0;
    if (get_u32(*f, "copies", path, pos, false, &copies) && f->count("copies") != 0) v.copies = copies;
    if (v.layout == Layout::kMirror && f->count("copies") == 0) v.copies = kMinCopies;
    get_u64(*f, "base", path, pos, true, &v.base);
    get_u32(*f, "queues", path, pos, false, &v.queues);
    get_u32(*f, "depth", path, pos, false, &v.depth);
    get_u64(*f, "max_mapped", path, pos, false, &v.max_mapped);
    get_enum(*f, "frontend", path, pos, kFrontends, &v.frontend);
    get_u32(*f, "poll_us", path, pos, false, &v.poll_us);
    get_enum(*f, "pin_queues", path, pos, kBooleans, &v.pin_queues);
    get_enum(*f, "chained_syncs", path, pos, kBooleans, &v.chained_syncs);
  }

  // A list of names (`what`s) at `path`; an item that is not a scalar is
  // reported and kept as "" so indexes stay aligned with the file.
  std::vector<std::string> get_names(const YAML::Node& value, const std::string& path, const char* what) {
    std::vector<std::string> out;
    if (!value.IsSequence()) {
      invalid(to_pos(value.Mark()), path,
              std::string("expected a list of ") + what + " names, got " + node_kind(value));
      config_->unparsed.insert(path);
      return out;
    }
    size_t i = 0;
    for (const YAML::Node& item : value) {
      std::string ipath = index_path(path, i++);
      SourcePos ipos = to_pos(item.Mark());
      config_->positions[ipath] = ipos;
      if (!item.IsScalar()) {
        invalid(ipos, ipath, std::string("expected a ") + what + " name, got " + node_kind(item));
        out.emplace_back();
        continue;
      }
      auto expanded = expand_env(item.Scalar());  // a list item is a value too
      if (!expanded) {
        invalid(ipos, ipath, expanded.error().context());
        config_->unparsed.insert(ipath);
        out.emplace_back();
        continue;
      }
      out.push_back(*expanded);
    }
    return out;
  }

  void parse_gateway(const YAML::Node& node, const std::string& path) {
    static const KeySpec kSpec{{"name", "host", "volumes"}, {}};
    GatewayConfig& g = config_->gateways.emplace_back();
    SourcePos pos = to_pos(node.Mark());
    config_->positions[path] = pos;
    auto f = map_fields(node, path, pos, kSpec);
    if (!f) return;
    get_string(*f, "name", path, pos, true, &g.name);
    get_string(*f, "host", path, pos, true, &g.host);
    auto it = f->find("volumes");
    if (it == f->end() || it->second.value.IsNull()) return;
    std::string vpath = path + ".volumes";
    config_->positions[vpath] = value_pos(it->second);
    g.volumes = get_names(it->second.value, vpath, "volume");
  }

  const std::string& file_;
  ClusterConfig* config_;
  std::set<std::pair<int, int>> reported_duplicates_;  // line, column of duplicate keys in merged maps
  std::vector<ConfigError>* errors_;
};

// ---- validation ----

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

// A name or address that HOST:PORT can carry: no brackets (an IPv6 address
// is written bare; the address gets them when a port is added), and not
// "unix", which would turn "unix:PORT" into a socket path.
bool valid_host(const std::string& host) {
  if (host.empty() || host.size() > 253 || host == "unix") return false;
  for (char c : host) {
    if (std::isspace(static_cast<unsigned char>(c)) || std::iscntrl(static_cast<unsigned char>(c)) || c == '/' ||
        c == '[' || c == ']') {
      return false;
    }
  }
  return true;
}

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

class Validator {
 public:
  explicit Validator(const ClusterConfig& c) : c_(c) {}

  std::vector<ConfigError> run() {
    check_cluster();
    check_bricks();
    check_volumes();
    check_gateways();
    return std::move(errors_);
  }

 private:
  // False when `path` or any enclosing key ("bricks[0].store" for
  // "bricks[0].store.size") was missing or unparsable.
  bool known(std::string path) const {
    for (;;) {
      if (c_.unparsed.count(path)) return false;
      size_t cut = path.find_last_of(".[");
      if (cut == std::string::npos || cut == 0) return true;
      path.resize(cut);
    }
  }

  // The position of `path`, else of its closest recorded ancestor.
  SourcePos pos(std::string path) const {
    while (!path.empty()) {
      if (auto it = c_.positions.find(path); it != c_.positions.end()) return it->second;
      size_t cut = path.find_last_of(".[");
      if (cut == std::string::npos) break;
      path.resize(cut);
    }
    return {};
  }

  void error(const std::string& path, std::string message) {
    errors_.push_back(ConfigError{c_.file, pos(path), path, std::move(message)});
  }

  std::string line_of(const std::string& path) const {
    SourcePos p = pos(path);
    return p.line > 0 ? " (line " + std::to_string(p.line) + ")" : "";
  }

  void check_name(const std::string& path, const std::string& name) {
    if (!known(path)) return;
    if (!valid_name(name)) {
      error(path, "invalid name " + quote(name) +
                      ": use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit");
    }
  }

  void check_key_file(const std::string& path, const std::string& key_file) {
    if (!known(path)) return;
    if (key_file.empty()) {
      // Given but empty (often an unset ${VAR:-}): it would mean "no
      // authentication" without anyone having said so.
      if (c_.positions.count(path) != 0) {
        error(path, "key file is empty (leave the key out for " +
                        std::string(path == "cluster.key_file" ? "no authentication" : "cluster.key_file") + ")");
      }
      return;
    }
    if (key_file[0] != '/') error(path, "key file " + quote(key_file) + " must be an absolute path");
  }

  void check_cluster() {
    check_name("cluster.name", c_.cluster.name);
    check_key_file("cluster.key_file", c_.cluster.key_file);
  }

  void check_bricks() {
    if (known("bricks") && c_.bricks.empty()) error("bricks", "at least one brick is required");
    std::map<std::string, std::string> names;       // name -> path of first definition
    std::map<std::string, std::string> endpoints;   // host:port -> brick name
    std::map<std::string, std::string> stores;      // host + path of a store, slow tier or socket -> brick
    std::map<std::string, const BrickConfig*> ddio_ports;  // host + netdev -> the first brick setting its DDIO
    for (size_t i = 0; i < c_.bricks.size(); i++) {
      const BrickConfig& b = c_.bricks[i];
      std::string p = index_path("bricks", i);
      check_name(p + ".name", b.name);
      if (known(p + ".name") && valid_name(b.name)) {
        auto [it, inserted] = names.emplace(b.name, p + ".name");
        if (!inserted) error(p + ".name", "duplicate brick name " + quote(b.name) + ", first defined at " +
                                              it->second + line_of(it->second));
      }
      if (known(p + ".host") && !valid_host(b.host)) error(p + ".host", "invalid host " + quote(b.host));
      if (known(p + ".port") && (b.port == 0 || b.port > 65535)) {
        error(p + ".port", "port " + std::to_string(b.port) + " is out of range (1-65535)");
      }
      // A brick on a unix socket listens on no port: bricks on one host may
      // leave theirs at the default.
      if (b.socket.empty() && known(p + ".host") && known(p + ".port") && valid_host(b.host) && b.port > 0 &&
          b.port <= 65535) {
        std::string endpoint = b.host + ":" + std::to_string(b.port);
        auto [it, inserted] = endpoints.emplace(endpoint, b.name);
        if (!inserted) error(p + ".port", endpoint + " is already used by brick " + quote(it->second));
      }
      if (b.key_file != c_.cluster.key_file || b.key_file.empty()) check_key_file(p + ".key_file", b.key_file);

      if (known(p + ".store.path")) {
        if (b.store.path.empty() || b.store.path[0] != '/') {
          error(p + ".store.path", "store path " + quote(b.store.path) + " must be an absolute path");
        } else if (known(p + ".host")) {
          auto [it, inserted] = stores.emplace(b.host + "\n" + b.store.path, b.name);
          if (!inserted) {
            error(p + ".store.path", "store " + quote(b.store.path) + " on " + b.host + " is already used by brick " +
                                         quote(it->second));
          }
        }
      }
      if (known(p + ".store.slow.path") && !b.store.slow_path.empty()) {
        if (b.store.slow_path[0] != '/') {
          error(p + ".store.slow.path", "slow tier path " + quote(b.store.slow_path) + " must be an absolute path");
        } else if (b.store.slow_path == b.store.path) {
          error(p + ".store.slow.path", "slow tier path " + quote(b.store.slow_path) + " is the store itself");
        } else if (known(p + ".host")) {
          auto [it, inserted] = stores.emplace(b.host + "\n" + b.store.slow_path, b.name);
          if (!inserted) {
            error(p + ".store.slow.path", "slow tier " + quote(b.store.slow_path) + " on " + b.host +
                                              " is already used by brick " + quote(it->second));
          }
        }
      }
      if (known(p + ".socket") && !b.socket.empty()) {
        auto e = parse_endpoint(std::string(kUnixPrefix) + b.socket, p + ".socket");
        if (!e) {
          error(p + ".socket", "socket " + quote(b.socket) + " must be an absolute path of at most " +
                                   std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
        } else if (b.transport == Transport::kRdma) {
          error(p + ".socket", "a unix socket is for transport 'tcp'; this brick's transport is 'rdma'");
        } else if (known(p + ".host")) {
          auto [it, inserted] = stores.emplace(b.host + "\n" + b.socket, b.name);
          if (!inserted) {
            error(p + ".socket", "socket " + quote(b.socket) + " on " + b.host + " is already used by brick " +
                                     quote(it->second));
          }
        }
        // pbrick-nbd@VOLUME removes and listens on /run/pbrick/VOLUME.sock
        // (a volume served through nbdkit, on any host: the brick may be
        // on the gateway's).
        for (const VolumeConfig& v : c_.volumes) {
          if (v.frontend == Frontend::kNbd && b.socket == "/run/pbrick/" + v.name + ".sock") {
            error(p + ".socket", "socket " + quote(b.socket) + " is where pbrick-nbd@" + v.name +
                                     " exports volume " + quote(v.name) + " (it removes what is there first)");
          }
        }
      }
      if (known(p + ".store.slow.low_watermark") && c_.positions.count(p + ".store.slow.low_watermark") &&
          b.store.slow_low_watermark == 0) {
        error(p + ".store.slow.low_watermark", "low watermark must be at least 1 free fast block (leave it out for "
                                               "the default, an eighth of the store)");
      }
      if (known(p + ".store.slow.demote_rate") && c_.positions.count(p + ".store.slow.demote_rate") &&
          b.store.slow_demote_rate < kBlockSize) {
        error(p + ".store.slow.demote_rate", "demotion rate " + std::to_string(b.store.slow_demote_rate) +
                                                 " is below one 2 MiB block a second");
      }
      if (known(p + ".store.slow.size") && !b.store.slow_path.empty()) {
        if (b.store.slow_size == 0) {
          error(p + ".store.slow.size", "slow tier size must not be zero");
        } else if (b.store.slow_size % kBlockSize != 0) {
          error(p + ".store.slow.size", "slow tier size " + std::to_string(b.store.slow_size) +
                                            " is not a multiple of the 2 MiB block size");
        }
      }
      if (known(p + ".store.size")) {
        if (b.store.size == 0) {
          error(p + ".store.size", "store size must not be zero");
        } else if (b.store.size % kBlockSize != 0) {
          error(p + ".store.size", "store size " + std::to_string(b.store.size) +
                                       " is not a multiple of the 2 MiB block size");
        }
      }

      if (b.transport == Transport::kRdma && known(p + ".nic.rdma_device") && b.nic.rdma_device.empty()) {
        error(p + ".transport",
              "transport 'rdma' requires nic.rdma_device (the RDMA device of the storage NIC, e.g. mlx5_0 or rxe0)");
      }
      if (b.nic.ddio != DdioMode::kUnmanaged && known(p + ".nic.netdev") && b.nic.netdev.empty()) {
        error(p + ".nic.ddio", std::string("ddio '") + ddio_mode_name(b.nic.ddio) +
                                   "' requires nic.netdev (the interface whose PCIe root port is configured)");
      }
      // One NIC's root port has one DDIO setting: a brick applying 'on' there
      // would silently undo the 'off' a sync-read brick's durability rests on.
      if (b.nic.ddio != DdioMode::kUnmanaged && !b.nic.netdev.empty() && known(p + ".nic.ddio") &&
          known(p + ".nic.netdev") && known(p + ".host")) {
        auto [it, inserted] = ddio_ports.emplace(b.host + "\n" + b.nic.netdev, &b);
        if (!inserted && it->second->nic.ddio != b.nic.ddio) {
          error(p + ".nic.ddio", std::string("ddio '") + ddio_mode_name(b.nic.ddio) + "' on " + b.nic.netdev +
                                     " of " + b.host + " contradicts brick " + quote(it->second->name) +
                                     ", which sets it '" + ddio_mode_name(it->second->nic.ddio) +
                                     "' (the NIC's root port has one setting)");
        }
      }
      for (auto [key, value] : {std::pair<const char*, uint32_t>{"max_connections", b.max_connections},
                                {"max_handshakes", b.max_handshakes}}) {
        std::string kp = p + "." + key;
        if (known(kp) && c_.positions.count(kp) != 0 && (value == 0 || value > kMaxBrickConnections)) {
          error(kp, std::string(key) + " " + std::to_string(value) + " is out of range (1-" +
                        std::to_string(kMaxBrickConnections) + ")");
        }
      }
      // Over TCP the brick's CPU persists before it answers the sync READ, so
      // sync-read needs nothing of the NIC there.
      if (b.persistence == Persistence::kSyncRead && b.transport == Transport::kRdma && known(p + ".nic.ddio") &&
          b.nic.ddio != DdioMode::kOff) {
        error(p + ".persistence",
              std::string("persistence 'sync-read' needs DDIO off on the storage NIC (nic.ddio is '") +
                  ddio_mode_name(b.nic.ddio) +
                  "'): with DDIO on, RDMA writes land in the CPU cache, outside the persistence domain, and a read "
                  "does not flush them; set nic.ddio: off or use persistence: rpc");
      }
    }
  }

  void check_volumes() {
    std::map<std::string, std::string> names;
    bool bricks_known = all_names_known("bricks", c_.bricks.size());
    for (size_t i = 0; i < c_.volumes.size(); i++) {
      const VolumeConfig& v = c_.volumes[i];
      std::string p = index_path("volumes", i);
      check_name(p + ".name", v.name);
      if (known(p + ".name") && valid_name(v.name)) {
        auto [it, inserted] = names.emplace(v.name, p + ".name");
        if (!inserted) error(p + ".name", "duplicate volume name " + quote(v.name) + ", first defined at " +
                                              it->second + line_of(it->second));
      }
      if (known(p + ".size")) {
        if (v.size == 0) {
          error(p + ".size", "volume size must not be zero");
        } else if (v.size % kBlockSize != 0) {
          error(p + ".size", "volume size " + std::to_string(v.size) + " is not a multiple of the 2 MiB block size");
        }
      }
      if (known(p + ".base")) {
        if (v.base % kBlockSize != 0) {
          error(p + ".base", "base " + format_hex(v.base) + " is not aligned to the 2 MiB block size");
        } else if (known(p + ".size") && v.size > UINT64_MAX - v.base) {
          error(p + ".size", "base " + format_hex(v.base) + " + size overflows the 64-bit address space");
        }
      }
      check_volume_bricks(v, p, bricks_known);
      if (known(p + ".queues") && (v.queues == 0 || v.queues > kMaxQueues)) {
        error(p + ".queues", "queues " + std::to_string(v.queues) + " is out of range (1-" +
                                 std::to_string(kMaxQueues) + ")");
      }
      if (known(p + ".max_mapped") && v.max_mapped != 0 && v.max_mapped < kMinMaxMapped) {
        error(p + ".max_mapped", "max_mapped " + std::to_string(v.max_mapped) + " is below the minimum of " +
                                     std::to_string(kMinMaxMapped) + " blocks (0: no bound)");
      }
      if (known(p + ".depth") && (!is_power_of_two(v.depth) || v.depth > kMaxDepth)) {
        error(p + ".depth", "depth " + std::to_string(v.depth) + " must be a power of two between 1 and " +
                                std::to_string(kMaxDepth));
      }
      if (known(p + ".poll_us") && v.poll_us > kMaxPollUs) {
        error(p + ".poll_us", "poll_us " + std::to_string(v.poll_us) + " is out of range (0-" +
                                  std::to_string(kMaxPollUs) + " microseconds)");
      }
      if (known(p + ".pin_queues") && known(p + ".frontend") && v.pin_queues && v.frontend != Frontend::kUblk) {
        error(p + ".pin_queues", "pin_queues pins the ublk frontend's queue threads; this volume's frontend is " +
                                     std::string(frontend_name(v.frontend)));
      }
    }
    check_overlaps();
  }

  // The bricks a volume names exist, each once, as many as its layout takes.
  void check_volume_bricks(const VolumeConfig& v, const std::string& p, bool bricks_known) {
    std::vector<std::string> bricks = v.brick_names();
    bool listed = positions_has(p + ".bricks") || bricks.size() > 1;
    if (!known(listed ? p + ".bricks" : p + ".brick")) return;
    if (bricks.empty()) {
      if (listed) error(p + ".bricks", "a volume needs at least one brick");
      return;
    }
    for (size_t j = 0; j < bricks.size(); j++) {
      std::string bp = listed ? index_path(p + ".bricks", j) : p + ".brick";
      if (bricks[j].empty()) continue;  // reported by the parser
      if (bricks_known && !c_.find_brick(bricks[j])) {
        error(bp, "unknown brick " + quote(bricks[j]) + known_names_of_bricks());
      }
      for (size_t k = 0; k < j; k++) {
        if (bricks[k] == bricks[j]) error(bp, "brick " + quote(bricks[j]) + " is named twice");
      }
      const BrickConfig* b = c_.find_brick(bricks[j]);
      const BrickConfig* first = c_.find_brick(bricks[0]);
      if (b != nullptr && first != nullptr && b->transport != first->transport) {
        error(bp, "brick " + quote(b->name) + " uses transport " + transport_name(b->transport) + ", brick " +
                      quote(first->name) + " " + transport_name(first->transport) +
                      ": the bricks of a volume share one transport");
      }
    }
    if (bricks.size() > kMaxVolumeBricks) {
      error(p + ".bricks", std::to_string(bricks.size()) + " bricks; a volume has at most " +
                               std::to_string(kMaxVolumeBricks));
    }
    if (!known(p + ".layout")) return;
    if (v.layout == Layout::kSingle && bricks.size() > 1) {
      error(p + ".bricks", "layout single takes one brick, not " + std::to_string(bricks.size()) +
                               " (use 'layout: stripe')");
    } else if (v.layout == Layout::kStripe && bricks.size() < 2) {
      error(listed ? p + ".bricks" : p + ".brick", "layout stripe takes at least two bricks");
    }
    if (v.layout != Layout::kMirror) {
      if (positions_has(p + ".copies")) error(p + ".copies", "copies go with 'layout: mirror'");
    } else if (known(p + ".copies")) {
      if (v.copies < kMinCopies || v.copies > kMaxCopies) {
        error(positions_has(p + ".copies") ? p + ".copies" : p + ".layout",
              "layout mirror keeps 2 or 3 copies, not " + std::to_string(v.copies));
      } else if (bricks.size() < v.copies) {
        error(listed ? p + ".bricks" : p + ".brick",
              "layout mirror with " + std::to_string(v.copies) + " copies takes at least " +
                  std::to_string(v.copies) + " bricks, not " + std::to_string(bricks.size()));
      }
    }
  }

  bool positions_has(const std::string& path) const { return c_.positions.count(path) != 0; }

  // When an entry's name could not be parsed, a reference to it would be
  // reported as unknown too; skip reference checks rather than cascade.
  bool all_names_known(const std::string& list, size_t count) const {
    if (!known(list)) return false;
    for (size_t i = 0; i < count; i++) {
      if (!known(index_path(list, i) + ".name")) return false;
    }
    return true;
  }

  std::string known_names_of_bricks() const {
    std::string out;
    for (const BrickConfig& b : c_.bricks) {
      if (b.name.empty()) continue;
      out += out.empty() ? " (known bricks: " : ", ";
      out += b.name;
    }
    return out.empty() ? "" : out + ")";
  }

  bool range_usable(size_t i) const {
    const VolumeConfig& v = c_.volumes[i];
    std::string p = index_path("volumes", i);
    return known(p + ".brick") && known(p + ".base") && known(p + ".size") && v.size != 0 &&
           v.size <= UINT64_MAX - v.base && v.base % kBlockSize == 0 && !v.brick_names().empty();
  }

  // What volume i occupies on each of its bricks: data [base, base + share)
  // with share = size (single), ceil(blocks / N) blocks (stripe) or
  // ceil(blocks / N) * copies blocks (mirror; Placement), and its
  // label area of two blocks at kLabelAreaStart + 2 * base (docs/layout.md,
  // "Volume label").
  // Bytes of each brick the volume takes; UINT64_MAX when that does not fit
  // 64 bits (the range check then refuses it).
  uint64_t share_of(const VolumeConfig& v) const {
    uint64_t blocks = v.size / kBlockSize + (v.size % kBlockSize != 0);
    Placement placement{static_cast<uint32_t>(v.brick_names().size()), v.layout == Layout::kMirror ? v.copies : 1};
    uint64_t slots = placement.slots_per_brick(blocks);
    return slots > UINT64_MAX / kBlockSize ? UINT64_MAX : slots * kBlockSize;
  }
  static std::string range(uint64_t start, uint64_t end) {
    return "[" + format_hex(start) + ", " + format_hex(end) + ")";
  }

  // Two volumes on one brick must not share any block, neither of data nor of
  // their label areas: ranges are half-open. Data must stay below the label
  // areas. Reported once, at the later volume's base.
  void check_overlaps() {
    for (size_t j = 0; j < c_.volumes.size(); j++) {
      if (!range_usable(j)) continue;
      const VolumeConfig& b = c_.volumes[j];
      const std::string bpath = index_path("volumes", j) + ".base";
      if (b.base > kMaxLabelledBase || share_of(b) > kLabelAreaStart - b.base) {
        error(bpath, "data " + range(b.base, b.base + share_of(b)) + " on each brick must end at or below " +
                         format_hex(kLabelAreaStart) + ", where label areas live (base at most " +
                         format_hex(kMaxLabelledBase) + ")");
        continue;
      }
      for (size_t i = 0; i < j; i++) {
        if (!range_usable(i)) continue;
        const VolumeConfig& a = c_.volumes[i];
        if (a.base > kMaxLabelledBase || share_of(a) > kLabelAreaStart - a.base) continue;
        const std::vector<std::string> a_bricks = a.brick_names();
        for (const std::string& brick : b.brick_names()) {
          if (std::find(a_bricks.begin(), a_bricks.end(), brick) == a_bricks.end()) continue;
          uint64_t as = a.base, ae = a.base + share_of(a), bs = b.base, be = b.base + share_of(b);
          uint64_t al = kLabelAreaStart + 2 * a.base, bl = kLabelAreaStart + 2 * b.base;
          if (as < be && bs < ae) {
            error(bpath, "range " + range(bs, be) + " overlaps volume " + quote(a.name) + " " + range(as, ae) +
                             " on brick " + quote(brick));
          } else if (al < bl + kLabelArea && bl < al + kLabelArea) {
            error(bpath, "label area " + range(bl, bl + kLabelArea) + " overlaps that of volume " + quote(a.name) +
                             " " + range(al, al + kLabelArea) + " on brick " + quote(brick));
          }
          break;  // one error per pair of volumes
        }
      }
    }
  }

  void check_gateways() {
    std::map<std::string, std::string> names;
    std::map<std::string, std::string> exported;  // volume -> gateway
    bool volumes_known = all_names_known("volumes", c_.volumes.size());
    for (size_t i = 0; i < c_.gateways.size(); i++) {
      const GatewayConfig& g = c_.gateways[i];
      std::string p = index_path("gateways", i);
      check_name(p + ".name", g.name);
      if (known(p + ".name") && valid_name(g.name)) {
        auto [it, inserted] = names.emplace(g.name, p + ".name");
        if (!inserted) error(p + ".name", "duplicate gateway name " + quote(g.name) + ", first defined at " +
                                              it->second + line_of(it->second));
      }
      if (known(p + ".host") && !valid_host(g.host)) error(p + ".host", "invalid host " + quote(g.host));
      std::set<std::string> mine;
      for (size_t j = 0; j < g.volumes.size(); j++) {
        std::string vp = index_path(p + ".volumes", j);
        if (!known(vp)) continue;
        const std::string& name = g.volumes[j];
        if (!c_.find_volume(name)) {
          if (volumes_known) error(vp, "unknown volume " + quote(name));
          continue;
        }
        if (!mine.insert(name).second) {
          error(vp, "volume " + quote(name) + " is listed twice");
          continue;
        }
        // Two gateways writing one volume would corrupt it: there is no
        // cross-gateway coordination, a volume has exactly one writer.
        auto [it, inserted] = exported.emplace(name, g.name);
        if (!inserted) {
          error(vp, "volume " + quote(name) + " is already exposed by gateway " + quote(it->second) +
                        " (a volume has a single writer)");
        }
      }
    }
  }

  const ClusterConfig& c_;
  std::vector<ConfigError> errors_;
};

void sort_errors(std::vector<ConfigError>* errors) {
  std::stable_sort(errors->begin(), errors->end(), [](const ConfigError& a, const ConfigError& b) {
    int la = a.pos.line > 0 ? a.pos.line : INT_MAX;
    int lb = b.pos.line > 0 ? b.pos.line : INT_MAX;
    if (la != lb) return la < lb;
    return a.pos.column < b.pos.column;
  });
}

Result<std::string> read_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_error("open " + path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return errno_error("stat " + path);
  if (S_ISDIR(st.st_mode)) return Error(EISDIR, path + ": is a directory");
  if (S_ISREG(st.st_mode) && st.st_size > kMaxConfigBytes) {
    return Error(EFBIG, path + ": " + format_size(static_cast<uint64_t>(st.st_size)) +
                            " is too large for a configuration file");
  }
  std::string text;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error("read " + path);
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > static_cast<size_t>(kMaxConfigBytes)) {
      return Error(EFBIG, path + ": too large for a configuration file");
    }
  }
  return text;
}

}  // namespace

const char* ddio_mode_name(DdioMode m) { return enum_name(kDdioModes, m); }
const char* frontend_name(Frontend f) { return enum_name(kFrontends, f); }

std::string ConfigError::to_string() const {
  std::string out;
  std::string where = pos.line > 0 ? std::to_string(pos.line) + ":" + std::to_string(pos.column) : "";
  if (!file.empty()) {
    out += file;
    if (!where.empty()) out += ":" + where;
    out += ": ";
  } else if (!where.empty()) {
    out += where + ": ";
  }
  if (!path.empty()) out += path + ": ";
  out += message;
  return out;
}

const BrickConfig* ClusterConfig::find_brick(const std::string& name) const {
  for (const BrickConfig& b : bricks) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

std::vector<std::string> VolumeConfig::brick_names() const {
  if (bricks.empty() && !brick.empty()) return {brick};
  return bricks;
}

const VolumeConfig* ClusterConfig::find_volume(const std::string& name) const {
  for (const VolumeConfig& v : volumes) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

const GatewayConfig* ClusterConfig::find_gateway(const std::string& name) const {
  for (const GatewayConfig& g : gateways) {
    if (g.name == name) return &g;
  }
  return nullptr;
}

std::vector<const VolumeConfig*> ClusterConfig::volumes_on(const std::string& brick) const {
  std::vector<const VolumeConfig*> out;
  for (const VolumeConfig& v : volumes) {
    const std::vector<std::string> all = v.brick_names();
    if (std::find(all.begin(), all.end(), brick) != all.end()) out.push_back(&v);
  }
  return out;
}

ConfigParseResult parse_cluster_config(const std::string& yaml_text, const std::string& file) {
  ConfigParseResult result;
  result.config.file = file;
  Parser parser(file, &result.config, &result.errors);
  try {
    // Count documents with a bounded scan instead of YAML::LoadAll: in
    // yaml-cpp 0.7 LoadAll loops forever, allocating, on input such as a line
    // starting with ',' (yaml-cpp issue #1040, fixed upstream in PR #1319),
    // because the parser reports empty documents without consuming anything.
    std::istringstream stream(yaml_text);
    YAML::Parser scanner(stream);
    DocumentScan scan;
    while (scan.documents.size() < 2 && scanner.HandleNextDocument(scan)) {
    }
    if (scan.documents.size() == 2) {
      const YAML::Mark& first = scan.documents[0].start;
      const YAML::Mark& second = scan.documents[1].start;
      if (first.pos == second.pos) {  // no progress: the stuck-parser case
        std::string what = second.pos >= 0 && static_cast<size_t>(second.pos) < yaml_text.size()
                               ? " '" + std::string(1, yaml_text[static_cast<size_t>(second.pos)]) + "'"
                               : "";
        throw YAML::ParserException(second, "unexpected character" + what);
      }
      parser.error(to_pos(scan.documents[1].root), "", "only one YAML document is allowed in a configuration file");
    }
    parser.parse_document(scan.documents.empty() ? YAML::Node() : YAML::Load(yaml_text));
  } catch (const YAML::Exception& e) {
    // Syntax errors end parsing: yaml-cpp cannot resume after one. Whatever
    // was collected before stays (nothing, in practice: Load parses first).
    ConfigError err{file, to_pos(e.mark), "", e.msg};
    if (err.pos.line == 0) err.pos = {1, 1};
    err.message = "YAML syntax error: " + e.msg;
    result.errors.push_back(std::move(err));
    result.yaml_ok = false;
  } catch (const std::exception& e) {
    result.errors.push_back(ConfigError{file, {}, "", std::string("cannot parse: ") + e.what()});
    result.yaml_ok = false;
  }
  return result;
}

std::vector<ConfigError> validate_cluster_config(const ClusterConfig& config) {
  try {
    return Validator(config).run();
  } catch (const std::exception& e) {  // only std::bad_alloc is possible
    return {ConfigError{config.file, {}, "", std::string("validation failed: ") + e.what()}};
  }
}

ConfigParseResult check_cluster_config(const std::string& yaml_text, const std::string& file) {
  ConfigParseResult result = parse_cluster_config(yaml_text, file);
  if (result.yaml_ok) {
    std::vector<ConfigError> more = validate_cluster_config(result.config);
    result.errors.insert(result.errors.end(), std::make_move_iterator(more.begin()),
                         std::make_move_iterator(more.end()));
  }
  sort_errors(&result.errors);
  return result;
}

ConfigParseResult check_cluster_config_file(const std::string& path) {
  auto text = read_file(path);
  if (!text) {
    ConfigParseResult result;
    result.config.file = path;
    result.errors.push_back(ConfigError{"", {}, "", text.error().message()});
    result.yaml_ok = false;
    return result;
  }
  return check_cluster_config(*text, path);
}

Result<ClusterConfig> load_cluster_config(const std::string& path) {
  auto text = read_file(path);
  // The reason goes into the context: callers print the context alone (an
  // EINVAL's is the list of mistakes, its strerror only noise).
  if (!text) return Error(text.error().errnum(), text.error().message());
  ConfigParseResult result = check_cluster_config(*text, path);
  if (result.errors.empty()) return std::move(result.config);
  std::string joined;
  for (const ConfigError& e : result.errors) {
    if (!joined.empty()) joined += '\n';
    joined += e.to_string();
  }
  return Error(EINVAL, joined);
}

int config_check_main(int argc, char** argv) {
  static const char kUsage[] = "usage: pbrickctl config check FILE\n";
  std::vector<std::string> files;
  for (int i = 1; i < argc; i++) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg.size() > 1 && arg[0] == '-') {
      std::fprintf(stderr, "pbrickctl config check: unknown option '%s'\n%s", argv[i], kUsage);
      return 2;
    }
    files.emplace_back(arg);
  }
  if (files.size() != 1) {
    std::fprintf(stderr, "pbrickctl config check: expected exactly one FILE\n%s", kUsage);
    return 2;
  }
  const std::string& file = files[0];
  ConfigParseResult result = check_cluster_config_file(file);
  if (!result.errors.empty()) {
    for (const ConfigError& e : result.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return 1;
  }
  auto count = [](size_t n, const char* noun) { return std::to_string(n) + " " + noun + (n == 1 ? "" : "s"); };
  std::printf("%s: OK (%s, %s, %s)\n", file.c_str(), count(result.config.bricks.size(), "brick").c_str(),
              count(result.config.volumes.size(), "volume").c_str(),
              count(result.config.gateways.size(), "gateway").c_str());
  return 0;
}

Endpoint BrickConfig::endpoint() const {
  if (!socket.empty()) {
    Endpoint e;
    e.unix_path = socket;
    return e;
  }
  return Endpoint{host, static_cast<uint16_t>(port)};
}

}  // namespace pbrick
