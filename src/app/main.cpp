#include "app/commands.hpp"

#include <cstdio>
#include <string_view>

namespace {

constexpr std::string_view usage = R"(usage: keel COMMAND [FLAGS]

keel is an actor-based stateful workflow service: event-sourced actors over
partitioned log topics that commit their effects exactly once.

commands:
  serve      run the daemon: log, runtime, REST API and dashboard
  topics     list or create topics (keel topics list | keel topics create NAME)
  produce    append JSON lines from stdin to a topic
  tail       print records of a topic as JSON lines
  gen        generate a workload (keel gen ledger)
  sim        simulate a merge queue policy (keel sim mergequeue)
  version    print the version

Run 'keel COMMAND --help' for the flags of a command.
)";

} // namespace

int main(int argc, char** argv) {
  using namespace keel::app;
  if (argc < 2) {
    std::fputs(usage.data(), stderr);
    return exit_usage;
  }
  std::string_view command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "serve") return run_serve(args);
  if (command == "topics") return run_topics(args);
  if (command == "produce") return run_produce(args);
  if (command == "tail") return run_tail(args);
  if (command == "gen") return run_gen(args);
  if (command == "sim") return run_sim(args);
  if (command == "version" || command == "--version") {
    std::printf("keel %s\n", KEEL_VERSION);
    return exit_ok;
  }
  if (command == "help" || command == "--help" || command == "-h") {
    std::fputs(usage.data(), stdout);
    return exit_ok;
  }
  std::fprintf(stderr, "keel: unknown command '%.*s' (see keel --help)\n",
               static_cast<int>(command.size()), command.data());
  return exit_usage;
}
