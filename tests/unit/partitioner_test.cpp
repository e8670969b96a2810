#include "log/partitioner.hpp"

#include <doctest/doctest.h>
#include <librdkafka/rdkafka.h>

#include <random>
#include <string>

using namespace keel;

// Hash values from librdkafka's src/rdmurmur2.c unit test ("java_murmur2_results"),
// which are the values Kafka's Java client computes.
TEST_CASE("murmur2 matches the Java client's hashes from librdkafka's test vectors") {
  const char* unaligned = "PreAmbleWillBeRemoved,ThePrePartThatIs";
  struct vector {
    std::string key;
    std::uint32_t hash;
  };
  const vector vectors[] = {
    {"kafka", 0xd067cf64},          {"giberish123456789", 0x8f552b0c},
    {"1234", 0x9fc97b14},           {"234", 0xe7c009ca},
    {"34", 0x873930da},             {"4", 0x5a4b5ca1},
    {unaligned, 0x78424f1c},        {unaligned + 1, 0x4a62b377},
    {unaligned + 2, 0xe0e4e09e},    {unaligned + 3, 0x62b8b43f},
    {"", 0x106e08d9},
  };
  for (const auto& v : vectors) {
    CAPTURE(v.key);
    CHECK(murmur2(v.key) == v.hash);
  }
}

// Kafka's DefaultPartitioner: toPositive(murmur2(key)) % numPartitions.
TEST_CASE("partition_for_key clears the sign bit before taking the remainder") {
  // 0xd067cf64 has its top bit set: & 0x7fffffff = 0x5067cf64 = 1348980580.
  CHECK(partition_for_key("kafka", 1).value() == 0);
  CHECK(partition_for_key("kafka", 7).value() == static_cast<std::int32_t>(1348980580u % 7));
  CHECK(partition_for_key("kafka", 100).value() == 80);
  CHECK(partition_for_key("", 3).value() == static_cast<std::int32_t>(0x106e08d9u % 3));
}

// The other half of "byte for byte": ask librdkafka itself, the partitioner the
// Kafka backend uses, for thousands of random keys and partition counts.
TEST_CASE("partition_for_key agrees with librdkafka's murmur2 partitioner on random keys") {
  std::mt19937_64 rng{20261121};
  std::uniform_int_distribution<int> length(0, 64);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> count(1, 1000);
  for (int i = 0; i < 20000; ++i) {
    std::string key(static_cast<std::size_t>(length(rng)), '\0');
    for (auto& c : key) c = static_cast<char>(byte(rng));
    const int partitions = count(rng);
    const auto expected = rd_kafka_msg_partitioner_murmur2(nullptr, key.data(), key.size(),
                                                           partitions, nullptr, nullptr);
    REQUIRE(partition_for_key(key, partitions).value() == expected);
  }
}
