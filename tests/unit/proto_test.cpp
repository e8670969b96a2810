#include "keel/envelope.pb.h"

#include <doctest/doctest.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>

#include <set>

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

namespace {

// Sets every field of `m` (recursively, one level of each message type) to a
// value that differs from its default, so a field that failed to round-trip
// would show.
void fill(Message& m, int seed, std::set<const Descriptor*>& path) {
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  if (path.count(d) != 0) return;
  path.insert(d);
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->containing_oneof() != nullptr && r->HasOneof(m, f->containing_oneof())) continue;
    const int v = seed + i + 1;
    auto text = "v" + std::to_string(v) + "-\xc3\xa9\xe2\x82\xac";  // some non-ASCII
    for (int n = 0; n < (f->is_repeated() ? 2 : 1); ++n) {
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32:
          f->is_repeated() ? r->AddInt32(&m, f, -v) : r->SetInt32(&m, f, -v); break;
        case FieldDescriptor::CPPTYPE_INT64:
          f->is_repeated() ? r->AddInt64(&m, f, -(int64_t{1} << 40) - v) : r->SetInt64(&m, f, (int64_t{1} << 53) + v); break;
        case FieldDescriptor::CPPTYPE_UINT32:
          f->is_repeated() ? r->AddUInt32(&m, f, v) : r->SetUInt32(&m, f, v); break;
        case FieldDescriptor::CPPTYPE_UINT64:
          f->is_repeated() ? r->AddUInt64(&m, f, v) : r->SetUInt64(&m, f, v); break;
        case FieldDescriptor::CPPTYPE_BOOL:
          f->is_repeated() ? r->AddBool(&m, f, true) : r->SetBool(&m, f, true); break;
        case FieldDescriptor::CPPTYPE_DOUBLE:
          f->is_repeated() ? r->AddDouble(&m, f, v + 0.5) : r->SetDouble(&m, f, v + 0.5); break;
        case FieldDescriptor::CPPTYPE_FLOAT:
          f->is_repeated() ? r->AddFloat(&m, f, v + 0.5f) : r->SetFloat(&m, f, v + 0.5f); break;
        case FieldDescriptor::CPPTYPE_STRING:
          if (f->type() == FieldDescriptor::TYPE_BYTES) text = std::string("\0\xff\x01", 3) + text;
          f->is_repeated() ? r->AddString(&m, f, text) : r->SetString(&m, f, text); break;
        case FieldDescriptor::CPPTYPE_ENUM: {
          const auto* e = f->enum_type();
          const auto* value = e->value(e->value_count() - 1);
          f->is_repeated() ? r->AddEnum(&m, f, value) : r->SetEnum(&m, f, value);
          break;
        }
        case FieldDescriptor::CPPTYPE_MESSAGE: {
          Message* child = f->is_repeated() ? r->AddMessage(&m, f) : r->MutableMessage(&m, f);
          fill(*child, v * 10, path);
          break;
        }
      }
    }
  }
  path.erase(d);
}

std::vector<const Descriptor*> all_messages() {
  std::vector<const Descriptor*> out;
  const auto* file = keel::Envelope::descriptor()->file();
  std::vector<const google::protobuf::FileDescriptor*> files{file};
  for (int i = 0; i < file->dependency_count(); ++i) files.push_back(file->dependency(i));
  for (const auto* f : files)
    for (int i = 0; i < f->message_type_count(); ++i) out.push_back(f->message_type(i));
  return out;
}

} // namespace

TEST_CASE("every message of every schema round-trips through binary and JSON encodings") {
  auto messages = all_messages();
  REQUIRE(messages.size() >= 39);
  for (const auto* d : messages) {
    CAPTURE(d->full_name());
    const Message* prototype = google::protobuf::MessageFactory::generated_factory()->GetPrototype(d);
    std::unique_ptr<Message> original{prototype->New()};
    std::set<const Descriptor*> path;
    fill(*original, 0, path);
    REQUIRE(original->ByteSizeLong() > 0);

    std::string wire;
    REQUIRE(original->SerializeToString(&wire));
    std::unique_ptr<Message> decoded{prototype->New()};
    REQUIRE(decoded->ParseFromString(wire));
    CHECK(google::protobuf::util::MessageDifferencer::Equals(*original, *decoded));

    std::string json;
    REQUIRE(google::protobuf::util::MessageToJsonString(*original, &json).ok());
    std::unique_ptr<Message> from_json{prototype->New()};
    REQUIRE(google::protobuf::util::JsonStringToMessage(json, from_json.get()).ok());
    CHECK(google::protobuf::util::MessageDifferencer::Equals(*original, *from_json));
  }
}

TEST_CASE("every body of the envelope round-trips inside an envelope") {
  const auto* oneof = keel::Envelope::descriptor()->FindOneofByName("body");
  REQUIRE(oneof != nullptr);
  REQUIRE(oneof->field_count() >= 35);
  for (int i = 0; i < oneof->field_count(); ++i) {
    const auto* field = oneof->field(i);
    CAPTURE(field->name());
    keel::Envelope e;
    e.set_event_id("ledger.transactions/3/812/0");
    e.mutable_source()->set_topic("ledger.transactions");
    e.mutable_source()->set_partition(3);
    e.mutable_source()->set_offset(812);
    e.set_event_time_ms(1'763'700'000'000);
    e.set_schema_version(1);
    std::set<const Descriptor*> path;
    fill(*e.GetReflection()->MutableMessage(&e, field), i, path);
    keel::Envelope back;
    REQUIRE(back.ParseFromString(e.SerializeAsString()));
    CHECK(back.body_case() == static_cast<keel::Envelope::BodyCase>(field->number()));
    CHECK(google::protobuf::util::MessageDifferencer::Equals(e, back));
  }
}

TEST_CASE("bytes that are not a valid envelope fail to parse instead of yielding garbage") {
  keel::Envelope e;
  CHECK_FALSE(e.ParseFromString(std::string("\xff\xff\xff\xff\xff", 5)));
  CHECK_FALSE(e.ParseFromString(std::string("\x0a\x10short", 7))); // length beyond the end
}
