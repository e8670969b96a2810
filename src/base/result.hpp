#pragma once

#include "base/assert.hpp"
#include "base/error.hpp"

#include <type_traits>
#include <utility>
#include <variant>

namespace keel {

/// A value of type T or an `error`. Rejections and environment failures travel
/// as results; exceptions never cross an API of keel.
template <class T>
class [[nodiscard]] result {
public:
  using value_type = T;

  result(T value) : storage_(std::in_place_index<0>, std::move(value)) {}
  result(error e) : storage_(std::in_place_index<1>, std::move(e)) {}

  bool has_value() const noexcept { return storage_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  /// REQUIRES: has_value().
  T& value() & {
    KEEL_ASSERT(has_value(), "value() of a failed result: {}", std::get<1>(storage_));
    return std::get<0>(storage_);
  }
  const T& value() const& {
    KEEL_ASSERT(has_value(), "value() of a failed result: {}", std::get<1>(storage_));
    return std::get<0>(storage_);
  }
  T&& value() && {
    KEEL_ASSERT(has_value(), "value() of a failed result: {}", std::get<1>(storage_));
    return std::get<0>(std::move(storage_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  /// REQUIRES: !has_value().
  const error& err() const& {
    KEEL_ASSERT(!has_value(), "err() of a successful result");
    return std::get<1>(storage_);
  }
  error&& err() && {
    KEEL_ASSERT(!has_value(), "err() of a successful result");
    return std::get<1>(std::move(storage_));
  }

private:
  std::variant<T, error> storage_;
};

/// Success without a value, or an `error`.
template <>
class [[nodiscard]] result<void> {
public:
  using value_type = void;

  result() = default;
  result(error e) : error_(std::move(e)), failed_(true) {}

  bool has_value() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return has_value(); }

  const error& err() const& {
    KEEL_ASSERT(failed_, "err() of a successful result");
    return error_;
  }
  error&& err() && {
    KEEL_ASSERT(failed_, "err() of a successful result");
    return std::move(error_);
  }

private:
  error error_;
  bool failed_ = false;
};

/// Shorthand for a successful result<void>.
inline result<void> ok() { return {}; }

} // namespace keel

/// Evaluates `expr` (a result); on failure returns its error from the enclosing
/// function, otherwise yields nothing. Keeps error paths one line long.
#define KEEL_TRY(expr)                                                                 \
  do {                                                                                 \
    if (auto keel_try_result_ = (expr); !keel_try_result_)                             \
      return std::move(keel_try_result_).err();                                        \
  } while (false)
