#include "app/json_bytes.hpp"

#include <boost/json.hpp>

namespace keel::app {

std::string base64_encode(std::string_view bytes) {
  static constexpr char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    std::uint32_t v = (std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16) |
                      (std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8) |
                      static_cast<unsigned char>(bytes[i + 2]);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += alphabet[v & 63];
  }
  if (i < bytes.size()) {
    std::uint32_t v = std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16;
    if (i + 1 < bytes.size()) v |= std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

void put_bytes(boost::json::object& out, std::string_view field, std::string_view bytes) {
  if (!bytes.empty() && (bytes.front() == '{' || bytes.front() == '[') && is_utf8(bytes)) {
    boost::system::error_code ec;
    auto parsed = boost::json::parse(bytes, ec);
    if (!ec) {
      out[field] = std::move(parsed);
      return;
    }
  }
  if (is_utf8(bytes)) {
    out[field] = bytes;
  } else {
    out[std::string{field} + "_base64"] = base64_encode(bytes);
  }
}

} // namespace keel::app
