// Parsing and validation of OpenAI request bodies (/v1/completions, /v1/chat/completions)
// into the engine's request_params.
//
// Accepted fields (unknown fields are ignored; null means "default" for every optional field):
//   model (string)            prompt (completions: string, [string] with one element, [token
//   ids] or [[token ids]] with one element)      messages (chat: [{role, content}], content a
//   string, null or an array of {"type": "text", "text": ...} parts)
//   max_tokens / max_completion_tokens (int >= 1; completions default 16, chat default: until
//   the context is full)      temperature [0, 2] (default 1)   top_p (0, 1]   top_k (int; <= 0
//   off)   min_p [0, 1]   presence_penalty, frequency_penalty [-2, 2]   repetition_penalty > 0
//   seed (int; default random)   stop (string or up to 16 non-empty strings)   n (int >= 1)
//   logprobs (completions: int in [0, 20]; chat: bool, with top_logprobs int in [0, 20])
//   stream (bool)   stream_options.include_usage (bool)   ignore_eos (bool)
//   min_tokens (int >= 0)   echo (completions: bool)   tools (chat: array, passed to the template)
//   chat_template_kwargs (chat: object of extra template variables, as vLLM accepts)
//   kv_policy (string: a KV policy spec, e.g. "streaming:sinks=4,size=508"; default: the server's)
//   best_of (completions: int >= n), use_beam_search (completions: bool; best_of beams, the n
//   best returned; not with stream), length_penalty (beam search: number in [-10, 10], default 1)
//   speculative (object {"draft_tokens": D in [1, 16], "exit_layer": E >= 0 (0: the server's
//   draft model), "min_draft_p": [0, 1)}, or false / {"draft_tokens": 0} for none; default: the server's)
// A wrong type or range is an api_error (400) naming the field in `param`, e.g.
//   {"message": "temperature must be a number in [0, 2], got \"hot\"", "param": "temperature"}.
// Limits that depend on the engine (context length, n at most max_n) are checked by the
// engine's validate(); http_server maps those messages to a param.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "sched/request.h"
#include "server/api_error.h"

namespace kvs {

class tokenizer;

enum class api_endpoint { completions, chat };

struct openai_request {
    api_endpoint endpoint = api_endpoint::completions;
    std::string model;            // "" when absent
    request_params params;        // completions: prompt filled in; chat: prompt left empty
    bool stream = false;
    bool include_usage = false;   // stream_options.include_usage
    bool echo = false;            // completions: the prompt text precedes the completion
    std::string prompt_text;      // completions: the prompt as text (decoded for token prompts)
    // chat, in the request's own key order (templates print tool schemas as given):
    nlohmann::ordered_json messages;  // validated; content given as text parts joined to a string
    nlohmann::ordered_json tools;     // "tools" as given (null when absent)
    nlohmann::ordered_json template_kwargs;  // "chat_template_kwargs": extra template variables ({} when absent)
};

// Parses a /v1/completions body. Text prompts are tokenized with BOS when the vocabulary asks
// for it (tokenizer::add_bos); token-id prompts are used as given.
std::optional<api_error> parse_completion_request(const nlohmann::ordered_json& body, const tokenizer& tok,
                                                  openai_request* out);

// Parses a /v1/chat/completions body; the caller renders `messages` into params.prompt.
std::optional<api_error> parse_chat_request(const nlohmann::ordered_json& body, openai_request* out);

}  // namespace kvs
