// Stop strings over streamed text: emits only text that cannot be the start of a stop string,
// holds back the rest, and cuts the output right before the first stop string that appears
// (the stop string itself is never emitted), as the OpenAI API does.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvs {

class stop_matcher {
public:
    stop_matcher() = default;
    explicit stop_matcher(std::vector<std::string> stops);

    // Appends generated text; returns what may be sent now. Sets *stopped when a stop string
    // appeared; the returned text then ends right before it and later calls are not expected.
    std::string push(std::string_view text, bool* stopped);
    // At the end of generation: the text still held back (no stop string matched).
    std::string flush();
    bool active() const { return !stops_.empty(); }

private:
    std::vector<std::string> stops_;  // non-empty strings
    std::string held_;                // tail that is a prefix of some stop string
};

}  // namespace kvs
