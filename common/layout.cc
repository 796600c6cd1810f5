#include "common/layout.h"

#include <string>

namespace pbrick {

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kStripe:
      return "stripe";
    case Layout::kMirror:
      return "mirror";
    case Layout::kSingle:
      break;
  }
  return "single";
}

Result<Layout> parse_layout(std::string_view text, std::string_view what) {
  if (text == "single") return Layout::kSingle;
  if (text == "stripe") return Layout::kStripe;
  if (text == "mirror") return Layout::kMirror;
  return Error(EINVAL, std::string(what) + ": unknown layout '" + std::string(text) +
                           "' (expected single, stripe or mirror)");
}

}  // namespace pbrick
