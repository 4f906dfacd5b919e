#include "npcai/msgpack.hpp"

#include <cstring>
#include <limits>

namespace npcai::msgpack {

// --- Value ----------------------------------------------------------------------------------

Value::Value(unsigned long long v) {
  if (v > static_cast<unsigned long long>(std::numeric_limits<long long>::max())) {
    type_ = Type::UInt;
    num_.u = v;
  } else {
    type_ = Type::Int;
    num_.i = static_cast<long long>(v);
  }
}

Value Value::float32(float v) {
  Value out(static_cast<double>(v));
  out.type_ = Type::Float32;
  return out;
}

Value Value::bin(std::string_view bytes) {
  Value out(bytes);
  out.type_ = Type::Bin;
  return out;
}

Value Value::array(std::initializer_list<Value> items) {
  Value out;
  out.type_ = Type::Array;
  out.items_.assign(items.begin(), items.end());
  out.len_ = items.size();
  return out;
}

Value Value::map() {
  Value out;
  out.type_ = Type::Map;
  return out;
}

// Building drops the stale items a reused decode may have left after the live ones.
Value& Value::push(Value item) {
  items_.resize(len_);
  items_.push_back(std::move(item));
  ++len_;
  return *this;
}

Value& Value::set(std::string_view key, Value item) {
  items_.resize(2 * len_);
  items_.emplace_back(key);
  items_.push_back(std::move(item));
  ++len_;
  return *this;
}

long long Value::as_int(long long otherwise) const {
  return type_ == Type::Int ? num_.i : otherwise;
}

unsigned long long Value::as_uint() const {
  return type_ == Type::UInt ? num_.u : static_cast<unsigned long long>(num_.i);
}

double Value::as_double(double otherwise) const {
  switch (type_) {
    case Type::Int: return static_cast<double>(num_.i);
    case Type::UInt: return static_cast<double>(num_.u);
    case Type::Float32:
    case Type::Float64: return num_.f;
    default: return otherwise;
  }
}

std::string_view Value::as_str() const {
  return type_ == Type::Str || type_ == Type::Bin ? std::string_view(bytes_) : std::string_view();
}

const Value* Value::find(std::string_view k) const {
  if (type_ != Type::Map) return nullptr;
  for (std::size_t i = 0; i < len_; ++i) {
    if (key(i).type_ == Type::Str && key(i).bytes_ == k) return &val(i);
  }
  return nullptr;
}

const Value& Value::operator[](std::string_view k) const {
  static const Value nil;
  const Value* v = find(k);
  return v ? *v : nil;
}

bool Value::operator==(const Value& o) const {
  if (type_ != o.type_) return false;
  switch (type_) {
    case Type::Nil: return true;
    case Type::Bool: return num_.b == o.num_.b;
    case Type::Int: return num_.i == o.num_.i;
    case Type::UInt: return num_.u == o.num_.u;
    case Type::Float32:
    case Type::Float64: return num_.f == o.num_.f;
    case Type::Str:
    case Type::Bin: return bytes_ == o.bytes_;
    case Type::Array:
    case Type::Map: {
      if (len_ != o.len_) return false;
      const std::size_t n = type_ == Type::Map ? 2 * len_ : len_;
      for (std::size_t i = 0; i < n; ++i) {
        if (items_[i] != o.items_[i]) return false;
      }
      return true;
    }
  }
  return false;
}

// --- encoding -------------------------------------------------------------------------------

namespace {

void put_be(std::vector<std::uint8_t>& out, std::uint8_t tag, unsigned long long v, int bytes) {
  out.push_back(tag);
  for (int shift = 8 * (bytes - 1); shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

void put_uint(std::vector<std::uint8_t>& out, unsigned long long v) {
  if (v < 0x80) out.push_back(static_cast<std::uint8_t>(v));
  else if (v <= 0xff) put_be(out, 0xcc, v, 1);
  else if (v <= 0xffff) put_be(out, 0xcd, v, 2);
  else if (v <= 0xffffffffull) put_be(out, 0xce, v, 4);
  else put_be(out, 0xcf, v, 8);
}

void put_int(std::vector<std::uint8_t>& out, long long v) {
  if (v >= 0) return put_uint(out, static_cast<unsigned long long>(v));
  const auto bits = static_cast<unsigned long long>(v);  // two's complement, truncated by put_be
  if (v >= -32) out.push_back(static_cast<std::uint8_t>(bits));
  else if (v >= -128) put_be(out, 0xd0, bits, 1);
  else if (v >= -32768) put_be(out, 0xd1, bits, 2);
  else if (v >= -2147483648ll) put_be(out, 0xd2, bits, 4);
  else put_be(out, 0xd3, bits, 8);
}

// Header of a str/bin/array/map: the fix form if the type has one (`fix` != 0) and `n` fits,
// else the 8-bit length if the type has one (`tag8` != 0), else 16 or 32 bits.
void put_len(std::vector<std::uint8_t>& out, std::size_t n, std::uint8_t fix, std::size_t fix_max,
             std::uint8_t tag8, std::uint8_t tag16, std::uint8_t tag32) {
  if (fix && n <= fix_max) out.push_back(static_cast<std::uint8_t>(fix | n));
  else if (tag8 && n <= 0xff) put_be(out, tag8, n, 1);
  else if (n <= 0xffff) put_be(out, tag16, n, 2);
  else put_be(out, tag32, n, 4);
}

void put_bytes(std::vector<std::uint8_t>& out, std::string_view s) {
  out.insert(out.end(), s.begin(), s.end());
}

}  // namespace

void encode(const Value& v, std::vector<std::uint8_t>& out) {
  switch (v.type()) {
    case Type::Nil: out.push_back(0xc0); break;
    case Type::Bool: out.push_back(v.as_bool() ? 0xc3 : 0xc2); break;
    case Type::Int: put_int(out, v.as_int()); break;
    case Type::UInt: put_uint(out, v.as_uint()); break;
    case Type::Float32: {
      const float f = static_cast<float>(v.as_double());
      std::uint32_t bits;
      std::memcpy(&bits, &f, sizeof bits);
      put_be(out, 0xca, bits, 4);
      break;
    }
    case Type::Float64: {
      const double d = v.as_double();
      std::uint64_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      put_be(out, 0xcb, bits, 8);
      break;
    }
    case Type::Str:
      put_len(out, v.as_str().size(), 0xa0, 31, 0xd9, 0xda, 0xdb);
      put_bytes(out, v.as_str());
      break;
    case Type::Bin:
      put_len(out, v.as_str().size(), 0, 0, 0xc4, 0xc5, 0xc6);
      put_bytes(out, v.as_str());
      break;
    case Type::Array:
      put_len(out, v.size(), 0x90, 15, 0, 0xdc, 0xdd);
      for (std::size_t i = 0; i < v.size(); ++i) encode(v.at(i), out);
      break;
    case Type::Map:
      put_len(out, v.size(), 0x80, 15, 0, 0xde, 0xdf);
      for (std::size_t i = 0; i < v.size(); ++i) {
        encode(v.key(i), out);
        encode(v.val(i), out);
      }
      break;
  }
}

// --- decoding -------------------------------------------------------------------------------

namespace {

// Well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or code points past U+10FFFF),
// as the sidecar's and the other bridges' strict decoders require of a str.
bool valid_utf8(const std::uint8_t* p, std::size_t n) {
  const std::uint8_t* const end = p + n;
  while (p < end) {
    const std::uint8_t b = *p++;
    if (b < 0x80) continue;
    std::size_t more = 0;
    std::uint8_t lo = 0x80, hi = 0xbf;  // the range of the first continuation byte
    if (b >= 0xc2 && b <= 0xdf) {
      more = 1;
    } else if (b >= 0xe0 && b <= 0xef) {
      more = 2;
      if (b == 0xe0) lo = 0xa0;  // overlong
      if (b == 0xed) hi = 0x9f;  // surrogates
    } else if (b >= 0xf0 && b <= 0xf4) {
      more = 3;
      if (b == 0xf0) lo = 0x90;  // overlong
      if (b == 0xf4) hi = 0x8f;  // past U+10FFFF
    } else {
      return false;
    }
    if (static_cast<std::size_t>(end - p) < more || *p < lo || *p > hi) return false;
    for (std::size_t i = 1; i < more; ++i) {
      if ((p[i] & 0xc0) != 0x80) return false;
    }
    p += more;
  }
  return true;
}

}  // namespace

class Decoder {
 public:
  Decoder(const std::uint8_t* data, std::size_t size, const Limits& limits)
      : p_(data), end_(data + size), limits_(limits) {}

  Error run(Value& out) {
    const Error e = value(out, 0);
    if (e != Error::None) return e;
    return p_ == end_ ? Error::None : Error::TrailingBytes;
  }

  bool leading_int(std::string_view key, long long& out) {
    unsigned long long n = 0;
    if (p_ == end_) return false;
    const std::uint8_t tag = *p_++;
    if (tag >= 0x80 && tag <= 0x8f) {
      n = tag & 0x0f;
    } else if (tag != 0xde && tag != 0xdf) {
      return false;
    } else if (!be(tag == 0xde ? 2 : 4, n)) {
      return false;
    }
    Value k, v;
    for (; n > 0; --n) {
      if (value(k, 1) != Error::None || value(v, 1) != Error::None) return false;
      if (k.is_str() && k.as_str() == key && v.type() == Type::Int) {
        out = v.as_int();
        return true;
      }
    }
    return false;
  }

 private:
  const std::uint8_t* p_;
  const std::uint8_t* end_;
  const Limits& limits_;

  std::size_t left() const { return static_cast<std::size_t>(end_ - p_); }

  bool be(int bytes, unsigned long long& v) {
    if (left() < static_cast<std::size_t>(bytes)) return false;
    v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | *p_++;
    return true;
  }

  // Scalars only retag `out`: assigning a fresh Value would free the storage kept for reuse.
  static void reset(Value& out, Type t) {
    out.type_ = t;
    out.len_ = 0;
  }

  static Error set_int(Value& out, long long v) {
    reset(out, Type::Int);
    out.num_.i = v;
    return Error::None;
  }

  static Error set_uint(Value& out, unsigned long long v) {
    if (v <= static_cast<unsigned long long>(std::numeric_limits<long long>::max())) {
      return set_int(out, static_cast<long long>(v));
    }
    reset(out, Type::UInt);
    out.num_.u = v;
    return Error::None;
  }

  static Error set_float(Value& out, Type t, double v) {
    reset(out, t);
    out.num_.f = v;
    return Error::None;
  }

  static Error set_bool(Value& out, bool v) {
    reset(out, Type::Bool);
    out.num_.b = v;
    return Error::None;
  }

  Error read_int(Value& out, int bytes, bool is_signed) {
    unsigned long long v;
    if (!be(bytes, v)) return Error::Truncated;
    if (!is_signed) return set_uint(out, v);
    const int unused = 64 - 8 * bytes;  // sign-extend from `bytes` wide
    return set_int(out, unused ? static_cast<long long>(v << unused) >> unused : static_cast<long long>(v));
  }

  Error bytes(Value& out, Type t, std::size_t n) {
    if (n > limits_.max_bytes_len) return Error::TooLong;
    if (n > left()) return Error::Truncated;
    if (t == Type::Str && !valid_utf8(p_, n)) return Error::NotUtf8;
    reset(out, t);
    out.bytes_.assign(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return Error::None;
  }

  Error container(Value& out, Type t, std::size_t n, std::size_t depth) {
    if (depth >= limits_.max_depth) return Error::TooDeep;
    if (n > limits_.max_container_len) return Error::TooLong;
    const std::size_t items = t == Type::Map ? 2 * n : n;
    if (items > left()) return Error::Truncated;  // every item takes at least one byte
    reset(out, t);
    if (out.items_.size() < items) out.items_.resize(items);
    for (std::size_t i = 0; i < items; ++i) {
      const Error e = value(out.items_[i], depth + 1);
      if (e != Error::None) return e;
    }
    out.len_ = n;
    return Error::None;
  }

  Error sized(Value& out, int len_bytes, Type t, std::size_t depth) {
    unsigned long long n;
    if (!be(len_bytes, n)) return Error::Truncated;
    if (t == Type::Array || t == Type::Map) return container(out, t, static_cast<std::size_t>(n), depth);
    return bytes(out, t, static_cast<std::size_t>(n));
  }

  Error value(Value& out, std::size_t depth) {
    if (p_ == end_) return Error::Truncated;
    const std::uint8_t tag = *p_++;
    if (tag < 0x80) return set_int(out, tag);
    if (tag >= 0xe0) return set_int(out, static_cast<std::int8_t>(tag));
    if (tag < 0x90) return container(out, Type::Map, tag & 0x0f, depth);
    if (tag < 0xa0) return container(out, Type::Array, tag & 0x0f, depth);
    if (tag < 0xc0) return bytes(out, Type::Str, tag & 0x1f);
    switch (tag) {
      case 0xc0: return reset(out, Type::Nil), Error::None;
      case 0xc2: return set_bool(out, false);
      case 0xc3: return set_bool(out, true);
      case 0xc4: return sized(out, 1, Type::Bin, depth);
      case 0xc5: return sized(out, 2, Type::Bin, depth);
      case 0xc6: return sized(out, 4, Type::Bin, depth);
      case 0xca: {
        unsigned long long bits;
        if (!be(4, bits)) return Error::Truncated;
        const auto b32 = static_cast<std::uint32_t>(bits);
        float f;
        std::memcpy(&f, &b32, sizeof f);
        return set_float(out, Type::Float32, f);
      }
      case 0xcb: {
        unsigned long long bits;
        if (!be(8, bits)) return Error::Truncated;
        double d;
        std::memcpy(&d, &bits, sizeof d);
        return set_float(out, Type::Float64, d);
      }
      case 0xcc: return read_int(out, 1, false);
      case 0xcd: return read_int(out, 2, false);
      case 0xce: return read_int(out, 4, false);
      case 0xcf: return read_int(out, 8, false);
      case 0xd0: return read_int(out, 1, true);
      case 0xd1: return read_int(out, 2, true);
      case 0xd2: return read_int(out, 4, true);
      case 0xd3: return read_int(out, 8, true);
      case 0xd9: return sized(out, 1, Type::Str, depth);
      case 0xda: return sized(out, 2, Type::Str, depth);
      case 0xdb: return sized(out, 4, Type::Str, depth);
      case 0xdc: return sized(out, 2, Type::Array, depth);
      case 0xdd: return sized(out, 4, Type::Array, depth);
      case 0xde: return sized(out, 2, Type::Map, depth);
      case 0xdf: return sized(out, 4, Type::Map, depth);
      default: return Error::BadType;  // 0xc1 (never used) and the ext family
    }
  }
};

Error decode(const std::uint8_t* data, std::size_t size, Value& out, const Limits& limits) {
  return Decoder(data, size, limits).run(out);
}

bool leading_int(const std::uint8_t* data, std::size_t size, std::string_view key, long long& out,
                 const Limits& limits) {
  return Decoder(data, size, limits).leading_int(key, out);
}

const char* to_string(Error e) {
  switch (e) {
    case Error::None: return "ok";
    case Error::Truncated: return "truncated";
    case Error::TrailingBytes: return "bytes after the value";
    case Error::BadType: return "unsupported type (ext or 0xc1)";
    case Error::TooDeep: return "nested too deeply";
    case Error::TooLong: return "container or string over the limits";
    case Error::NotUtf8: return "str is not valid UTF-8";
  }
  return "?";
}

}  // namespace npcai::msgpack
