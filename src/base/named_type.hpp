#pragma once

#include <compare>
#include <cstdint>
#include <functional>

#include <fmt/format.h>

namespace keel {

/// A value of type T that does not mix with other values of type T: an offset
/// cannot be passed where a partition is expected.
template <class T, class Tag>
class named_type {
public:
  using value_type = T;

  constexpr named_type() = default;
  constexpr explicit named_type(T value) : value_(value) {}

  constexpr T value() const noexcept { return value_; }

  friend constexpr auto operator<=>(const named_type&, const named_type&) = default;

private:
  T value_{};
};

/// Position of a record within one partition of one topic, from 0.
using log_offset = named_type<std::int64_t, struct log_offset_tag>;
/// Index of a partition within a topic, from 0.
using partition_id = named_type<std::int32_t, struct partition_id_tag>;

} // namespace keel

template <class T, class Tag>
struct std::hash<keel::named_type<T, Tag>> {
  std::size_t operator()(const keel::named_type<T, Tag>& v) const noexcept {
    return std::hash<T>{}(v.value());
  }
};

template <class T, class Tag>
struct fmt::formatter<keel::named_type<T, Tag>> : fmt::formatter<T> {
  auto format(const keel::named_type<T, Tag>& v, format_context& ctx) const {
    return fmt::formatter<T>::format(v.value(), ctx);
  }
};
