# Writes OUTPUT: a C++ source holding every file of ASSETS (absolute paths under
# BASE) as bytes, so the daemon serves its dashboard without files beside it.
# Run at build time: cmake -DBASE=... -DOUTPUT=... -DASSETS="a;b" -P embed_assets.cmake
set(body "")
set(table "")
set(index 0)
foreach(asset IN LISTS ASSETS)
  file(RELATIVE_PATH name "${BASE}" "${asset}")
  file(READ "${asset}" hex HEX)
  string(LENGTH "${hex}" hex_length)
  math(EXPR size "${hex_length} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," bytes "${hex}")
  string(APPEND body "const char asset_${index}[] = {${bytes} 0};\n")
  string(APPEND table "  {\"/${name}\", std::string_view{asset_${index}, ${size}}},\n")
  math(EXPR index "${index} + 1")
endforeach()
file(WRITE "${OUTPUT}.tmp" "// Generated from src/http/dashboard and src/http/api by cmake/embed_assets.cmake; do not edit.
#include \"http/assets.hpp\"

namespace keel::http {
namespace {
${body}
const embedded_asset table[] = {
${table}};
} // namespace

std::span<const embedded_asset> embedded_assets() noexcept { return table; }

} // namespace keel::http
")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different "${OUTPUT}.tmp" "${OUTPUT}")
file(REMOVE "${OUTPUT}.tmp")
