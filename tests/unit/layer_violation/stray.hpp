// A file that breaks the rules of src/state on purpose: the layer check must
// reject it (see tests/unit/CMakeLists.txt). It is never compiled.
#pragma once
#include <vector>
#include "state/counter.hpp"
#include <caf/all.hpp>
