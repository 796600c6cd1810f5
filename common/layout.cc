#include "common/layout.h"

#include <string>

namespace pbrick {

const char* layout_name(Layout l) { return l == Layout::kStripe ? "stripe" : "single"; }

Result<Layout> parse_layout(std::string_view text, std::string_view what) {
  if (text == "single") return Layout::kSingle;
  if (text == "stripe") return Layout::kStripe;
  return Error(EINVAL, std::string(what) + ": unknown layout '" + std::string(text) + "' (expected single or stripe)");
}

}  // namespace pbrick
