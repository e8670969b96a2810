#pragma once

#include <string_view>

namespace keel {

/// How much less CPU a background thread of the log asks for: the nice
/// value it adds to its own (Linux schedules threads alone; 10 gives it about
/// a tenth of a core that a task thread also wants).
inline constexpr int background_nice = 10;

/// Lowers the calling thread's CPU priority by background_nice, for work that
/// no commit waits for (summing snapshots up): on a machine whose cores are
/// busy, the tasks' steps go first and the background work takes what is
/// left. Not for a thread that may hold a lock commits wait on (the
/// checkpointer). A refusal is logged and changes nothing else.
/// Call it from the thread itself, first thing.
void lower_this_thread_priority(std::string_view thread_name);

} // namespace keel
