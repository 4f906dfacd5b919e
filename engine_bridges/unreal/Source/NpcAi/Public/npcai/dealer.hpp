// A ZMTP 3.1 DEALER over one non-blocking TCP connection: connect, handshake with the sidecar's
// ROUTER, then exchange one-frame messages. Never blocks; pump() moves the bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "npcai/socket.hpp"

namespace npcai {

class Dealer {
 public:
  enum class State { Closed, Connecting, Greeting, Handshaking, Open };

  explicit Dealer(std::size_t max_frame_bytes);

  // Starts connecting to "tcp://HOST:PORT" (HOST numeric, or localhost). False, with error(),
  // when the endpoint is malformed or the connect fails at once.
  bool connect(std::string_view endpoint);
  // Drops the connection and anything queued; `why` becomes error().
  void close(std::string_view why);

  State state() const { return state_; }
  bool is_open() const { return state_ == State::Open; }
  const std::string& error() const { return error_; }
  std::uint64_t bytes_received() const { return received_; }  // grows whenever anything arrives

  // Advances the handshake, writes what is queued and reads what has arrived, up to a bounded
  // amount. False once the connection is lost or refused (then state() is Closed, see error()).
  bool pump();

  // The next message that has arrived whole, if any. The bytes stay valid until the next call
  // of pump() or next(). Command frames are skipped; so are multipart messages, which the
  // protocol never sends (counted in dropped()).
  bool next(const std::uint8_t*& body, std::size_t& size);
  std::uint64_t dropped() const { return dropped_; }

  // Queues one message (a single frame) and tries to write it now. False when not open.
  bool send(const std::uint8_t* body, std::size_t size);

 private:
  net::TcpSocket socket_;
  State state_ = State::Closed;
  std::string error_;
  std::size_t max_frame_bytes_;
  std::vector<std::uint8_t> in_;  // received bytes live in [in_pos_, in_end_)
  std::size_t in_pos_ = 0;
  std::size_t in_end_ = 0;
  std::vector<std::uint8_t> out_;  // queued bytes live in [out_pos_, out_.size())
  std::size_t out_pos_ = 0;
  std::uint64_t received_ = 0;
  std::uint64_t dropped_ = 0;
  bool in_multipart_ = false;  // skipping the rest of a multipart message

  bool flush();
  bool fill();
  bool handshake();
};

}  // namespace npcai
