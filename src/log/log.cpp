#include "log/log.hpp"

namespace keel {
namespace {

/// A writer that commits through the backend.
class backend_writer final : public log_writer {
public:
  explicit backend_writer(log_backend& log) : log_(log) {}
  result<commit_receipt> commit(const commit_batch& batch) override { return log_.commit(batch); }

private:
  log_backend& log_;
};

constexpr std::size_t topic_name_max = 249; // Kafka's limit

} // namespace

result<void> validate_topic_spec(const topic_spec& spec) {
  if (spec.name.empty() || spec.name.size() > topic_name_max)
    return make_error(errc::invalid_argument, "topic name must have 1 to {} characters",
                      topic_name_max);
  for (char c : spec.name) {
    bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '.' || c == '_' || c == '-';
    if (!allowed)
      return make_error(errc::invalid_argument,
                        "topic name '{}' may only hold letters, digits, '.', '_' and '-'",
                        spec.name);
  }
  if (spec.partitions < 1 || spec.partitions > 10000)
    return make_error(errc::invalid_argument, "topic '{}': partitions must be 1 to 10000, got {}",
                      spec.name, spec.partitions);
  if (spec.retention_ms < -1 || spec.retention_bytes < -1 || spec.tombstone_retention_ms < 0)
    return make_error(errc::invalid_argument,
                      "topic '{}': retention limits must be -1 (none) or non-negative",
                      spec.name);
  return ok();
}

result<std::unique_ptr<log_writer>> log_backend::open_writer(std::string_view /*writer_id*/) {
  return std::unique_ptr<log_writer>{std::make_unique<backend_writer>(*this)};
}

} // namespace keel
