#include "support/http_client.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace keel::test {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;

std::optional<http_reply> http_request(const std::string& method, const std::string& host,
                                       std::uint16_t port, const std::string& target,
                                       const std::string& body,
                                       const std::map<std::string, std::string>& headers) {
  try {
    net::io_context io;
    beast::tcp_stream stream{io};
    stream.expires_after(std::chrono::seconds(30));
    stream.connect(net::ip::tcp::endpoint{net::ip::make_address(host), port});
    bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(method), target, 11};
    req.set(bhttp::field::host, host);
    for (const auto& [name, value] : headers) req.set(name, value);
    req.body() = body;
    req.prepare_payload();
    bhttp::write(stream, req);
    beast::flat_buffer buffer;
    bhttp::response<bhttp::string_body> res;
    bhttp::read(stream, buffer, res);
    http_reply out;
    out.status = static_cast<int>(res.result_int());
    out.body = res.body();
    for (const auto& field : res) out.headers[std::string{field.name_string()}] = std::string{field.value()};
    return out;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::pair<std::string, std::uint16_t> split_address(const std::string& text) {
  auto trimmed = text.substr(0, text.find_last_not_of(" \n\r") + 1);
  auto colon = trimmed.rfind(':');
  return {trimmed.substr(0, colon), static_cast<std::uint16_t>(std::stoi(trimmed.substr(colon + 1)))};
}

} // namespace keel::test
