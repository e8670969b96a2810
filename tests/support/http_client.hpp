#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace keel::test {

struct http_reply {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;
};

/// One blocking HTTP/1.1 request to 127.0.0.1 (or `host`); nullopt when the
/// connection fails.
std::optional<http_reply> http_request(const std::string& method, const std::string& host,
                                       std::uint16_t port, const std::string& target,
                                       const std::string& body = {},
                                       const std::map<std::string, std::string>& headers = {});

/// Splits "host:port" as written to DATA_DIR/http.addr.
std::pair<std::string, std::uint16_t> split_address(const std::string& text);

} // namespace keel::test
