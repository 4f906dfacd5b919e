// ZMTP 3.1 wire format for a DEALER with the NULL mechanism (docs/PROTOCOL.md, "Speaking ZMTP
// without libzmq"; rfc.zeromq.org/spec/37). Pure functions over bytes: the socket is dealer.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace npcai::zmtp {

constexpr std::size_t kGreetingSize = 64;

// Our greeting: signature, version 3.1, mechanism NULL, as-server 0.
void append_greeting(std::vector<std::uint8_t>& out);

// True when a peer's 64-byte greeting has the signature, major version 3 and the NULL mechanism.
bool greeting_ok(const std::uint8_t* greeting);

// A READY command announcing `socket_type` (we send "DEALER").
void append_ready(std::vector<std::uint8_t>& out, std::string_view socket_type);

// One message frame: short (1-byte size) up to 255 bytes, long (8-byte size) above.
void append_frame(std::vector<std::uint8_t>& out, const std::uint8_t* body, std::size_t size, bool more = false);

struct Frame {
  bool more = false;     // another frame of the same message follows
  bool command = false;  // a command (READY, PING, ...), not message data
  const std::uint8_t* body = nullptr;
  std::size_t size = 0;
};

enum class Parse { Ok, NeedMore, Malformed, TooLarge };

// Parses the frame at the start of [data, data + size). On Ok, `frame.body` points into `data`
// and `used` is the frame's whole length; on NeedMore, `used` is that length if the header has
// arrived, else 0. A body over `max_body` is TooLarge, before waiting for it.
Parse parse_frame(const std::uint8_t* data, std::size_t size, std::size_t max_body, Frame& frame, std::size_t& used);

// The Socket-Type property of a READY command body, or empty if the body is not a valid READY.
std::string_view ready_socket_type(const std::uint8_t* body, std::size_t size);

}  // namespace npcai::zmtp
