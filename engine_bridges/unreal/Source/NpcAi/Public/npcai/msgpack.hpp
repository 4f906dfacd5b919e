// The msgpack subset of protocol v1 (docs/PROTOCOL.md, "msgpack subset"): nil, bool, ints of
// every width, float32/64, str, bin, array and map. No ext types: the sidecar never sends them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace npcai::msgpack {

// Int holds every integer that fits int64_t; UInt only those above INT64_MAX.
enum class Type : std::uint8_t { Nil, Bool, Int, UInt, Float32, Float64, Str, Bin, Array, Map };

class Value {
 public:
  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool v) : type_(Type::Bool) { num_.b = v; }
  Value(int v) : Value(static_cast<long long>(v)) {}
  Value(long v) : Value(static_cast<long long>(v)) {}
  Value(long long v) : type_(Type::Int) { num_.i = v; }
  Value(unsigned v) : Value(static_cast<unsigned long long>(v)) {}
  Value(unsigned long v) : Value(static_cast<unsigned long long>(v)) {}
  Value(unsigned long long v);
  Value(double v) : type_(Type::Float64) { num_.f = v; }
  Value(const char* s) : Value(std::string_view(s)) {}
  Value(std::string_view s) : type_(Type::Str), bytes_(s) {}
  Value(const std::string& s) : Value(std::string_view(s)) {}

  static Value float32(float v);
  static Value bin(std::string_view bytes);
  static Value array(std::initializer_list<Value> items = {});
  static Value map();

  // Building: append an array element, or a map entry (insertion order is kept; keys are not
  // de-duplicated, the encoder writes entries as given).
  Value& push(Value item);
  Value& set(std::string_view key, Value item);

  Type type() const { return type_; }
  bool is_nil() const { return type_ == Type::Nil; }
  bool is_int() const { return type_ == Type::Int || type_ == Type::UInt; }
  bool is_number() const { return is_int() || type_ == Type::Float32 || type_ == Type::Float64; }
  bool is_str() const { return type_ == Type::Str; }
  bool is_map() const { return type_ == Type::Map; }
  bool is_array() const { return type_ == Type::Array; }

  bool as_bool(bool otherwise = false) const { return type_ == Type::Bool ? num_.b : otherwise; }
  // Int, or UInt when it fits; `otherwise` for anything else.
  long long as_int(long long otherwise = 0) const;
  unsigned long long as_uint() const;                   // UInt, or an Int as unsigned
  double as_double(double otherwise = 0) const;         // any number
  std::string_view as_str() const;                      // Str or Bin bytes; empty otherwise

  std::size_t size() const { return len_; }             // array elements or map entries
  const Value& at(std::size_t i) const { return items_[i]; }
  const Value& key(std::size_t i) const { return items_[2 * i]; }
  const Value& val(std::size_t i) const { return items_[2 * i + 1]; }
  const Value* find(std::string_view key) const;        // a map's value by string key, or null
  const Value& operator[](std::string_view key) const;  // ... or a nil Value

  bool operator==(const Value& other) const;
  bool operator!=(const Value& other) const { return !(*this == other); }

 private:
  friend class Decoder;
  Type type_ = Type::Nil;
  union {
    bool b;
    long long i;
    unsigned long long u;
    double f;
  } num_{};
  std::string bytes_;  // Str, Bin
  // Array elements, or map keys and values interleaved. Only the first `len_` (array) or
  // `2 * len_` (map) are live: decoding into a reused Value keeps the rest, and their own
  // storage, so that steady-state decoding allocates nothing.
  std::vector<Value> items_;
  std::size_t len_ = 0;
};

// Appends the smallest encoding of `v` to `out`.
void encode(const Value& v, std::vector<std::uint8_t>& out);

// The same in every bridge (docs/BRIDGES.md, "Replies"): a str or bin is bounded only by the
// frame (ClientConfig::max_frame_bytes, 16 MiB).
struct Limits {
  std::size_t max_depth = 32;             // nested maps and arrays
  std::size_t max_container_len = 65536;  // entries in one map or array
  std::size_t max_bytes_len = 16u << 20;  // bytes in one str or bin
};

enum class Error { None, Truncated, TrailingBytes, BadType, TooDeep, TooLong, NotUtf8 };
const char* to_string(Error e);

// Decodes exactly one value filling all of [data, data + size) into `out`, reusing its storage.
// Never reads past the end and never trusts a length before checking it against the limits
// and the bytes left, so garbage cannot make it allocate or recurse without bound.
Error decode(const std::uint8_t* data, std::size_t size, Value& out, const Limits& limits = {});

// The int under `key` among the leading entries, those that decode, of the map in
// [data, data + size): the id of a reply that does not decode whole (the sidecar writes v and
// id first). False if there is none.
bool leading_int(const std::uint8_t* data, std::size_t size, std::string_view key, long long& out,
                 const Limits& limits = {});

}  // namespace npcai::msgpack
