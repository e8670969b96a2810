#include "app/owners.hpp"

#include "base/json.hpp"
#include "base/logging.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>

namespace keel::app {

result<std::unique_ptr<owner_directory>> owner_directory::open(log_backend& log, std::string topic) {
  // Every record goes to partition 0. A cluster that can only auto-create
  // topics (librdkafka's mock) gives it more partitions, which stay empty.
  auto spec = log.describe_topic(topic);
  if (!spec && spec.err().code == errc::not_found) {
    auto created = log.create_topic({.name = topic, .partitions = 1, .cleanup = cleanup_policy::compact});
    if (!created && created.err().code != errc::conflict) return std::move(created).err();
    spec = log.describe_topic(topic);
  }
  if (!spec) return with_context(std::move(spec).err(), "owners topic " + topic);
  return std::unique_ptr<owner_directory>{new owner_directory(log, std::move(topic))};
}

result<void> owner_directory::publish(const std::string& url, const topic_partitions& held, std::int64_t at_ms) {
  std::map<std::string, std::vector<std::int32_t>> by_topic;
  for (const auto& [topic, p] : held) by_topic[topic].push_back(p);
  std::string partitions;
  for (auto& [topic, ps] : by_topic) {
    std::sort(ps.begin(), ps.end());
    partitions += fmt::format("{}{}:[{}]", partitions.empty() ? "" : ",", json_quote(topic), fmt::join(ps, ","));
  }
  commit_batch batch;
  batch.records.push_back(
    {topic_, partition_id{0},
     record{url, fmt::format(R"({{"url":{},"partitions":{{{}}},"at_ms":{}}})", json_quote(url), partitions, at_ms),
            at_ms, {}}});
  KEEL_TRY(log_.commit(batch));
  return refresh();
}

result<void> owner_directory::withdraw(const std::string& url) {
  commit_batch batch;
  batch.records.push_back({topic_, partition_id{0}, record{url, std::nullopt, 0, {}}});
  KEEL_TRY(log_.commit(batch));
  return refresh();
}

result<void> owner_directory::refresh() {
  std::lock_guard reading{read_mutex_};
  for (;;) {
    auto records = log_.read(topic_, partition_id{0}, log_offset{next_});
    if (!records) return std::move(records).err();
    if (records->empty()) return ok();
    for (const auto& r : *records) {
      next_ = r.offset.value() + 1;
      if (!r.data.key) continue;
      std::lock_guard lock{mutex_};
      if (!r.data.value) {
        members_.erase(*r.data.key);
        continue;
      }
      boost::system::error_code ec;
      auto parsed = boost::json::parse(*r.data.value, ec);
      const auto* o = ec ? nullptr : parsed.if_object();
      const auto* ps = o != nullptr ? o->if_contains("partitions") : nullptr;
      if (ps == nullptr || !ps->is_object()) {
        log(log_level::warn, "owners", "{} offset {}: not an owners record; skipped", topic_, r.offset.value());
        continue;
      }
      member m;
      m.offset = r.offset.value();
      if (const auto* at = o->if_contains("at_ms"); at != nullptr && at->is_int64()) m.at_ms = at->as_int64();
      for (const auto& [topic, list] : ps->as_object()) {
        if (!list.is_array()) continue;
        for (const auto& p : list.as_array())
          if (p.is_int64()) m.partitions.emplace(std::string{topic}, static_cast<std::int32_t>(p.as_int64()));
      }
      members_[*r.data.key] = std::move(m);
    }
  }
}

const std::pair<const std::string, owner_directory::member>* owner_directory::claimant(std::string_view topic,
                                                                                        std::int32_t p) const {
  const std::pair<const std::string, member>* best = nullptr;
  const std::pair<std::string, std::int32_t> key{std::string{topic}, p};
  for (const auto& entry : members_)
    if (entry.second.partitions.count(key) > 0 && (best == nullptr || entry.second.offset > best->second.offset))
      best = &entry;
  return best;
}

std::optional<std::string> owner_directory::owner(std::string_view topic, std::int32_t p) const {
  std::lock_guard lock{mutex_};
  const auto* found = claimant(topic, p);
  if (found == nullptr) return std::nullopt;
  return found->first;
}

std::string owner_directory::json() const {
  std::lock_guard lock{mutex_};
  boost::json::array members;
  for (const auto& [url, m] : members_) {
    boost::json::object partitions;
    for (const auto& [topic, p] : m.partitions) {
      if (claimant(topic, p)->first != url) continue;  // moved on to a newer claimant
      auto& list = partitions[topic];
      if (!list.is_array()) list = boost::json::array{};
      list.as_array().push_back(p);
    }
    members.push_back({{"url", url}, {"at_ms", m.at_ms}, {"partitions", std::move(partitions)}});
  }
  return boost::json::serialize(boost::json::object{{"topic", topic_}, {"members", std::move(members)}});
}

} // namespace keel::app
