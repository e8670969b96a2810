#include "app/rest_commands.hpp"

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>

namespace keel::app {

std::span<const command_route> command_routes() {
  static constexpr command_route routes[] = {
      {"/api/v1/accounts", "ledger.transactions", keel::Envelope::kOpenAccount},
      {"/api/v1/transactions", "ledger.transactions", keel::Envelope::kPostTransaction},
      {"/api/v1/limits", "ledger.limits", keel::Envelope::kSetLimit},
      {"/api/v1/queues/enqueue", "mq.commands", keel::Envelope::kEnqueue},
      {"/api/v1/queues/dequeue", "mq.commands", keel::Envelope::kDequeue},
      {"/api/v1/queues/priority", "mq.commands", keel::Envelope::kSetPriority},
      {"/api/v1/queues/pause", "mq.commands", keel::Envelope::kPauseQueue},
      {"/api/v1/queues/resume", "mq.commands", keel::Envelope::kResumeQueue},
      {"/api/v1/pull-requests/opened", "mq.commands", keel::Envelope::kPullRequestOpened},
      {"/api/v1/pull-requests/synchronized", "mq.commands", keel::Envelope::kPullRequestSynchronized},
      {"/api/v1/pull-requests/approved", "mq.commands", keel::Envelope::kPullRequestApproved},
      {"/api/v1/pull-requests/closed", "mq.commands", keel::Envelope::kPullRequestClosed},
      {"/api/v1/pull-requests/labeled", "mq.commands", keel::Envelope::kPullRequestLabeled},
  };
  return routes;
}

result<parsed_command> parse_command(std::string_view json, keel::Envelope::BodyCase body, std::int64_t now_ms) {
  parsed_command out;
  auto& envelope = out.envelope;
  // A body case is the number of its field in the Envelope's oneof.
  const auto* field = keel::Envelope::descriptor()->FindFieldByNumber(static_cast<int>(body));
  if (field == nullptr || field->containing_oneof() == nullptr ||
      field->type() != google::protobuf::FieldDescriptor::TYPE_MESSAGE)
    return make_error(errc::internal, "no command is a body case {}", static_cast<int>(body));
  google::protobuf::Message* message = envelope.GetReflection()->MutableMessage(&envelope, field);
  auto parsed = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece{json.data(), json.size()}, message);
  if (!parsed.ok())
    return make_error(errc::invalid_argument, "the body is not a valid {}: {}", message->GetDescriptor()->name(),
                      parsed.message().as_string());
  auto& key = out.key;
  auto& id = out.id;
  if (envelope.has_open_account()) key = envelope.open_account().account_id(), id = key;
  if (envelope.has_post_transaction())
    key = envelope.post_transaction().account_id(), id = envelope.post_transaction().transaction_id();
  if (envelope.has_set_limit()) key = envelope.set_limit().client_id(), id = envelope.set_limit().request_id();
  // Merge-queue commands and pull-request events: keyed by repository.
  const auto* reflection = message->GetReflection();
  const auto* descriptor = message->GetDescriptor();
  if (const auto* repo = descriptor->FindFieldByName("repository")) {
    key = reflection->GetString(*message, repo);
    if (const auto* rid = descriptor->FindFieldByName("request_id")) id = reflection->GetString(*message, rid);
  }
  if (key.empty())
    return make_error(errc::invalid_argument,
                      "the command needs its account_id (client_id for limits, repository for queues)");
  if (const auto* branch = descriptor->FindFieldByName("branch");
      branch != nullptr && reflection->GetString(*message, branch).empty())
    return make_error(errc::invalid_argument, "the command needs its branch");
  if (const auto* number = descriptor->FindFieldByName("number");
      number != nullptr && reflection->GetInt64(*message, number) <= 0)
    return make_error(errc::invalid_argument, "the command needs a positive pull request number");
  if (envelope.has_post_transaction() && id.empty())
    return make_error(errc::invalid_argument, "a transaction needs a transaction_id: it is its idempotency key");
  if (envelope.has_post_transaction() && envelope.post_transaction().booking_time_ms() == 0)
    envelope.mutable_post_transaction()->set_booking_time_ms(now_ms);
  if (id.empty()) id = fmt::format("{}-{}", key, now_ms);
  envelope.set_event_id(id);
  envelope.set_event_time_ms(now_ms);
  envelope.set_schema_version(1);
  return out;
}

} // namespace keel::app
