// conf/keel.toml: any text either loads or is refused with the reason.
#include "fuzz.hpp"

#include "app/config.hpp"

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  auto loaded = app::load_config_text(fuzz::as_text(data, size), "fuzz.toml");
  if (!loaded) {
    FUZZ_CHECK(loaded.err().code == errc::invalid_argument);
    FUZZ_CHECK(!loaded.err().message.empty());
    return 0;
  }
  // The listen address a loaded file sets is either usable or refused.
  auto listen = app::parse_listen_address(loaded->http.listen);
  if (!listen) FUZZ_CHECK(listen.err().code == errc::invalid_argument);
  // Loading is a function of the text: the same text gives the same settings.
  auto again = app::load_config_text(fuzz::as_text(data, size), "fuzz.toml");
  FUZZ_CHECK(again);
  FUZZ_CHECK(again->http.listen == loaded->http.listen);
  FUZZ_CHECK(again->server.data_dir == loaded->server.data_dir);
  return 0;
}
