// API keys of the server: where they come from and how a presented key is checked.
//
// Sources (kvserve serve): --api-key-file PATH (one key per line; blank lines and lines that
// start with '#' are skipped; surrounding spaces trimmed), the KVSERVE_API_KEY environment
// variable (one key, or several separated by commas), and --api-key KEY (visible in the
// process list, so the other two are preferred). Every source adds to the same set.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kvs {

// The keys of a key file's text. Error when a key holds a control character or whitespace
// inside it (the header could not carry it), naming the line.
result<std::vector<std::string>> parse_api_keys(std::string_view text);

// The keys of KVSERVE_API_KEY's value (comma-separated, spaces trimmed, empty parts skipped).
std::vector<std::string> split_api_keys(std::string_view value);

// Whether `presented` equals one of `keys`. Every key is compared over its whole length,
// whatever the bytes: the time does not tell where a near miss differs or which key matched.
bool api_key_matches(const std::vector<std::string>& keys, std::string_view presented);

}  // namespace kvs
