#include "npcai/zmtp.hpp"

#include <cstring>

namespace npcai::zmtp {

namespace {

constexpr std::uint8_t kMore = 0x01;
constexpr std::uint8_t kLong = 0x02;
constexpr std::uint8_t kCommand = 0x04;

void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

void put_short_string(std::vector<std::uint8_t>& out, std::string_view s) {
  out.push_back(static_cast<std::uint8_t>(s.size()));
  out.insert(out.end(), s.begin(), s.end());
}

void put_header(std::vector<std::uint8_t>& out, std::uint8_t flags, std::size_t size) {
  if (size <= 0xff) {
    out.push_back(flags);
    out.push_back(static_cast<std::uint8_t>(size));
    return;
  }
  out.push_back(flags | kLong);
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(static_cast<std::uint64_t>(size) >> shift));
}

// Property names compare without case (the spec's metadata names are case-insensitive).
bool same_name(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

}  // namespace

void append_greeting(std::vector<std::uint8_t>& out) {
  const std::size_t start = out.size();
  out.resize(start + kGreetingSize, 0);
  std::uint8_t* g = out.data() + start;
  g[0] = 0xff;   // signature: FF, 8 padding bytes, 7F
  g[9] = 0x7f;
  g[10] = 3;     // version 3.1
  g[11] = 1;
  std::memcpy(g + 12, "NULL", 4);  // mechanism, zero-padded to 20 bytes; as-server and filler stay 0
}

bool greeting_ok(const std::uint8_t* g) {
  static const std::uint8_t null_mechanism[20] = {'N', 'U', 'L', 'L'};
  return g[0] == 0xff && g[9] == 0x7f && g[10] == 3 && std::memcmp(g + 12, null_mechanism, 20) == 0;
}

void append_ready(std::vector<std::uint8_t>& out, std::string_view socket_type) {
  std::vector<std::uint8_t> body;
  put_short_string(body, "READY");
  put_short_string(body, "Socket-Type");
  put_u32(body, static_cast<std::uint32_t>(socket_type.size()));
  body.insert(body.end(), socket_type.begin(), socket_type.end());
  put_header(out, kCommand, body.size());
  out.insert(out.end(), body.begin(), body.end());
}

void append_frame(std::vector<std::uint8_t>& out, const std::uint8_t* body, std::size_t size, bool more) {
  put_header(out, more ? kMore : 0, size);
  out.insert(out.end(), body, body + size);
}

Parse parse_frame(const std::uint8_t* data, std::size_t size, std::size_t max_body, Frame& frame, std::size_t& used) {
  used = 0;
  if (size < 2) return Parse::NeedMore;
  const std::uint8_t flags = data[0];
  if (flags & ~(kMore | kLong | kCommand)) return Parse::Malformed;  // reserved bits must be 0
  std::size_t header = 2;
  std::uint64_t body = data[1];
  if (flags & kLong) {
    header = 9;
    if (size < header) return Parse::NeedMore;
    body = 0;
    for (int i = 1; i < 9; ++i) body = (body << 8) | data[i];
  }
  if (body > max_body) return Parse::TooLarge;
  if (size - header < body) {
    used = header + static_cast<std::size_t>(body);
    return Parse::NeedMore;
  }
  frame.more = flags & kMore;
  frame.command = flags & kCommand;
  frame.body = data + header;
  frame.size = static_cast<std::size_t>(body);
  used = header + frame.size;
  return Parse::Ok;
}

std::string_view ready_socket_type(const std::uint8_t* body, std::size_t size) {
  // Command body: name (1-byte length + bytes), then properties: name (1-byte length) and
  // value (4-byte big-endian length). Other properties (libzmq may send Identity) are skipped.
  if (size < 6 || body[0] != 5 || std::memcmp(body + 1, "READY", 5) != 0) return {};
  std::size_t at = 6;
  while (at < size) {
    const std::size_t name_len = body[at++];
    if (size - at < name_len + 4) return {};
    const std::string_view name(reinterpret_cast<const char*>(body + at), name_len);
    at += name_len;
    const std::size_t value_len = (std::size_t{body[at]} << 24) | (std::size_t{body[at + 1]} << 16) |
                                  (std::size_t{body[at + 2]} << 8) | body[at + 3];
    at += 4;
    if (size - at < value_len) return {};
    if (same_name(name, "Socket-Type")) return {reinterpret_cast<const char*>(body + at), value_len};
    at += value_len;
  }
  return {};
}

}  // namespace npcai::zmtp
