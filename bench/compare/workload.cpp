#include "workload.hpp"

#include <boost/json.hpp>

#include <charconv>
#include <fstream>
#include <stdexcept>
#include <unordered_map>

namespace bench_compare {
namespace {

std::string text(const boost::json::object& o, const char* name) {
  const auto* v = o.if_contains(name);
  if (v == nullptr || !v->is_string()) throw std::runtime_error(std::string{"missing "} + name);
  return std::string{v->as_string()};
}

/// Protobuf's JSON writes int64 as a string; accept a number too.
std::int64_t integer(const boost::json::object& o, const char* name) {
  const auto* v = o.if_contains(name);
  if (v == nullptr) return 0;
  if (v->is_int64()) return v->as_int64();
  if (!v->is_string()) throw std::runtime_error(std::string{"bad "} + name);
  const auto& s = v->as_string();
  std::int64_t out = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc{} || end != s.data() + s.size()) throw std::runtime_error(std::string{"bad "} + name);
  return out;
}

template <class F>
void each_line(const std::string& path, F&& f) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::string line;
  for (std::size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      auto doc = boost::json::parse(line);
      f(doc.as_object().at("value").as_object());
    } catch (const std::exception& e) {
      throw std::runtime_error(path + ":" + std::to_string(n) + ": " + e.what());
    }
  }
}

} // namespace

std::int32_t day_of_ms(std::int64_t ms) {
  const std::int64_t day_ms = 86'400'000;
  return static_cast<std::int32_t>(ms >= 0 ? ms / day_ms : (ms - day_ms + 1) / day_ms);
}

std::int32_t parse_day(const std::string& s) {
  int y = 0, m = 0, d = 0;
  if (s.size() != 10 || s[4] != '-' || s[7] != '-' || std::sscanf(s.c_str(), "%4d-%2d-%2d", &y, &m, &d) != 3 ||
      m < 1 || m > 12 || d < 1 || d > 31)
    throw std::runtime_error("bad date " + s);
  // Days from civil (Howard Hinnant's algorithm).
  y -= m <= 2;
  const int era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * static_cast<unsigned>(m + (m > 2 ? -3 : 9)) + 2) / 5 + static_cast<unsigned>(d) - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int>(doe) - 719468;
}

workload load(const std::string& dir) {
  workload w;
  each_line(dir + "/ledger.limits.jsonl", [&](const boost::json::object& v) {
    const auto& l = v.at("set_limit").as_object();
    w.limits.push_back({text(l, "client_id"), text(l, "currency"), integer(l, "floor_today_minor"),
                        integer(l, "floor_projected_minor")});
  });
  each_line(dir + "/ledger.transactions.jsonl", [&](const boost::json::object& v) {
    if (const auto* o = v.if_contains("open_account")) {
      const auto& a = o->as_object();
      w.accounts.push_back({text(a, "account_id"), text(a, "client_id"), text(a, "currency")});
    } else if (const auto* p = v.if_contains("post_transaction")) {
      const auto& t = p->as_object();
      transaction x;
      x.id = text(t, "transaction_id");
      x.account = text(t, "account_id");
      x.amount = integer(t, "amount_minor");
      x.currency = text(t, "currency");
      x.value_date = text(t, "value_date");
      x.value_day = parse_day(x.value_date);
      x.booking_ms = integer(t, "booking_time_ms");
      x.today = day_of_ms(x.booking_ms);
      w.transactions.push_back(std::move(x));
    } else {
      throw std::runtime_error("neither an opening nor a transaction");
    }
  });
  std::unordered_map<std::string, const account*> by_id;
  for (const auto& a : w.accounts) by_id.emplace(a.id, &a);
  for (auto& t : w.transactions)
    if (auto it = by_id.find(t.account); it != by_id.end()) t.client = it->second->client;
  return w;
}

} // namespace bench_compare
