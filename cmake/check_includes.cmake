# Usage: cmake -DDIR=<folder> -DLAYER=<name> -DALLOW=<re1|re2|...> -P check_includes.cmake
# Standard library headers (<vector>, <cstdint>, ...) are always allowed.
if(NOT DIR OR NOT LAYER)
  message(FATAL_ERROR "check_includes: DIR and LAYER are required")
endif()
file(GLOB_RECURSE sources "${DIR}/*.hpp" "${DIR}/*.cpp" "${DIR}/*.h" "${DIR}/*.cc")
set(bad "")
foreach(source IN LISTS sources)
  file(STRINGS "${source}" lines REGEX "^[ \t]*#[ \t]*include")
  foreach(line IN LISTS lines)
    string(REGEX MATCH "[<\"]([^>\"]+)[>\"]" _ "${line}")
    set(header "${CMAKE_MATCH_1}")
    if(header MATCHES "^[a-z_]+$")
      continue() # the C++ standard library
    endif()
    if(ALLOW AND header MATCHES "^(${ALLOW})")
      continue()
    endif()
    file(RELATIVE_PATH where "${DIR}" "${source}")
    string(APPEND bad "\n  ${where}: #include ${header}")
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR
    "layer ${LAYER} includes headers it may not depend on:${bad}\n"
    "allowed: the standard library and ${ALLOW}")
endif()
