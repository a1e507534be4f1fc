// An error as the OpenAI API reports it: an HTTP status and the body
//   {"error": {"message": ..., "type": ..., "param": <name or null>, "code": <string or null>}}
// Handlers return these as values; http_server turns them into responses.
#pragma once

#include <string>
#include <utility>

namespace kvs {

struct api_error {
    int http_status = 400;
    std::string message;
    std::string param;                           // the offending request field; "" = null
    std::string type = "invalid_request_error";  // OpenAI error type
    std::string code;                            // machine-readable code; "" = null

    static api_error invalid(std::string message, std::string param = "") {
        return {400, std::move(message), std::move(param), "invalid_request_error", ""};
    }
};

// The JSON body of an error response (serialized).
std::string api_error_body(const api_error& e);

}  // namespace kvs
