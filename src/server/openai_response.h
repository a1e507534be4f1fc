// JSON bodies of OpenAI responses, non-streamed and as server-sent-event chunks.
//
//   /v1/completions       {"id": "cmpl-…", "object": "text_completion", "created", "model",
//                          "choices": [{"index", "text", "logprobs", "finish_reason"}], "usage"}
//     logprobs (legacy shape): {"tokens": [piece], "token_logprobs": [lp],
//                               "top_logprobs": [{piece: lp}], "text_offset": [byte offset]}
//   /v1/chat/completions  {"id": "chatcmpl-…", "object": "chat.completion", …, "choices":
//                          [{"index", "message": {"role": "assistant", "content"},
//                            "logprobs": {"content": [{"token", "logprob", "bytes",
//                                          "top_logprobs": [{"token", "logprob", "bytes"}]}]},
//                            "finish_reason"}], "usage"}
//   streamed: one chunk per event, object "text_completion" / "chat.completion.chunk"; chat
//   chunks carry "delta" ({"role": "assistant", "content": ""} first, then {"content"});
//   finish_reason is null until a choice's last chunk. With stream_options.include_usage,
//   every chunk has "usage": null and a last chunk has "choices": [] and the usage.
// usage = {"prompt_tokens", "completion_tokens" (over all choices), "total_tokens",
//          "prompt_tokens_details": {"cached_tokens"} (prompt tokens served from the prefix cache)}.
// Logprobs are natural logs; -inf (a masked token) is reported as -9999.0, as OpenAI does.
// Token pieces that are not valid UTF-8 on their own (byte tokens) are serialized with U+FFFD;
// chat "bytes" carry the exact bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sched/request.h"
#include "server/openai_request.h"

namespace kvs {

class tokenizer;

struct response_meta {
    api_endpoint endpoint = api_endpoint::completions;
    std::string id;       // "cmpl-…" or "chatcmpl-…"
    std::string model;    // the served model name
    int64_t created = 0;  // unix seconds
};

// A fresh id for a response: "cmpl-" or "chatcmpl-" and 24 random hex digits.
std::string new_response_id(api_endpoint endpoint);
response_meta make_response_meta(api_endpoint endpoint, const std::string& model);

// Everything one completion (choice) produced, for a non-streamed response.
struct completion_choice {
    std::string text;
    std::vector<token_logprobs> logprobs;  // one per generated token when asked for
    finish_reason finish = finish_reason::none;
};

// "stop", "length" (and "cancelled" / "error" for requests ended by the server); null if none.
nlohmann::json finish_reason_json(finish_reason r);
nlohmann::json usage_json(const request_usage& u);

// The whole non-streamed response. `echo` (completions) precedes every choice's text.
nlohmann::json completion_response(const response_meta& meta, const std::vector<completion_choice>& choices,
                                   const request_usage& usage, const tokenizer& tok, bool with_logprobs,
                                   const std::string& echo);

// Per-choice state of a streamed response.
struct stream_choice_state {
    int64_t text_offset = 0;  // completions logprobs: bytes of text before the next token
};

// The opening chunk of a choice: chat sends the assistant role, completions the echoed prompt.
// Returns null when there is nothing to open with (completions without echo).
nlohmann::json stream_open_chunk(const response_meta& meta, int32_t index, const std::string& echo, bool with_usage);
// The chunk for one engine event, or null when it carries nothing to send (no text, no
// logprobs, not finished).
nlohmann::json stream_event_chunk(const response_meta& meta, const request_event& ev, const tokenizer& tok,
                                  bool with_logprobs, bool with_usage, stream_choice_state* state);
// The last chunk with include_usage: no choices, the usage.
nlohmann::json stream_usage_chunk(const response_meta& meta, const request_usage& usage);

// Server-sent-event framing: "data: <json>\n\n" and the terminating "data: [DONE]\n\n".
std::string sse_data(const nlohmann::json& chunk);
inline const char* sse_done() { return "data: [DONE]\n\n"; }

// Serializes without throwing on invalid UTF-8 (replaced by U+FFFD).
std::string dump_json(const nlohmann::json& j);

}  // namespace kvs
