// librdkafka's mock cluster as a process of its own, for tests that run
// several daemons against one cluster.
//
//   mock_kafka_server [--brokers N]
//
// Prints "bootstrap HOST:PORT,..." on a line of its own once the brokers
// listen, then reads commands, one per line, and answers each "ok" or
// "error: ...":
//
//   topic NAME PARTITIONS      create a topic
//   down BROKER | up BROKER    take a broker down (connections closed) or up
//   rtt BROKER MS              delay a broker's responses
//   errors APIKEY ERR...       the next requests of APIKEY fail with ERR, in order
//
// Ends when its input ends.

#include "support/mock_kafka.hpp"

#include <iostream>
#include <sstream>
#include <string>

int main(int argc, char** argv) {
  int brokers = 3;
  for (int i = 1; i + 1 < argc; i += 2)
    if (std::string{argv[i]} == "--brokers") brokers = std::stoi(argv[i + 1]);
  keel::test::mock_kafka cluster{brokers};
  std::cout << "bootstrap " << cluster.bootstrap() << std::endl;
  for (std::string line; std::getline(std::cin, line);) {
    std::istringstream in{line};
    std::string verb;
    in >> verb;
    try {
      if (verb == "topic") {
        std::string name;
        int partitions = 0;
        in >> name >> partitions;
        cluster.create_topic(name, partitions);
      } else if (verb == "down" || verb == "up") {
        int broker = 0;
        in >> broker;
        verb == "down" ? cluster.broker_down(broker) : cluster.broker_up(broker);
      } else if (verb == "rtt") {
        int broker = 0, ms = 0;
        in >> broker >> ms;
        cluster.broker_rtt(broker, ms);
      } else if (verb == "errors") {
        int api_key = 0;
        in >> api_key;
        std::vector<int> errors;
        for (int e; in >> e;) errors.push_back(e);
        cluster.push_errors(static_cast<std::int16_t>(api_key), errors);
      } else if (!verb.empty()) {
        std::cout << "error: unknown command " << verb << std::endl;
        continue;
      }
      std::cout << "ok" << std::endl;
    } catch (const std::exception& e) {
      std::cout << "error: " << e.what() << std::endl;
    }
  }
  return 0;
}
