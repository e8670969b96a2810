# Layer rules: each folder under src/ may include only what its layer allows.
# Every third-party header lives in /usr/include, so an include path alone cannot
# keep CAF out of src/state; this check reads the sources before each build and
# fails it on a stray include. The same script runs in a test against a
# deliberately bad folder to show the check bites.

set(KEEL_LAYER_SCRIPT ${CMAKE_CURRENT_LIST_DIR}/check_includes.cmake)

# keel_layer_check(<target> <dir> ALLOW <regex>...)
# Fails the build of <target> when a file under <dir> includes a header that
# matches none of the regexes. Standard library headers are always allowed.
function(keel_layer_check target dir)
  cmake_parse_arguments(ARG "" "" "ALLOW" ${ARGN})
  string(JOIN "|" allow ${ARG_ALLOW})
  add_custom_target(${target}_layer_check
    COMMAND ${CMAKE_COMMAND} -DDIR=${dir} -DLAYER=${target} "-DALLOW=${allow}"
            -P ${KEEL_LAYER_SCRIPT}
    COMMENT "Checking the includes of ${target}"
    VERBATIM)
  add_dependencies(${target} ${target}_layer_check)
endfunction()
