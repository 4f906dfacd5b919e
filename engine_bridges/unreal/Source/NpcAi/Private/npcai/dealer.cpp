#include "npcai/dealer.hpp"

#include <cstring>

#include "npcai/zmtp.hpp"

namespace npcai {

namespace {

// Unparsed bytes held before reading pauses: beyond this the kernel buffers, and TCP slows the
// sidecar down, instead of this process growing without bound when the game polls too rarely.
constexpr std::size_t kReadAhead = 64 * 1024;

bool parse_endpoint(std::string_view endpoint, std::string& host, std::uint16_t& port, std::string& error) {
  constexpr std::string_view scheme = "tcp://";
  const std::size_t colon = endpoint.rfind(':');
  if (endpoint.substr(0, scheme.size()) != scheme || colon == std::string_view::npos || colon < scheme.size()) {
    error = "endpoint must be tcp://HOST:PORT, got " + std::string(endpoint);
    return false;
  }
  std::string_view h = endpoint.substr(scheme.size(), colon - scheme.size());
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  host = h == "localhost" ? "127.0.0.1" : std::string(h);
  const std::string_view digits = endpoint.substr(colon + 1);
  bool ok = !digits.empty() && digits.size() <= 5;  // five digits cannot overflow `value`
  unsigned long value = 0;
  for (const char c : digits) {
    ok = ok && c >= '0' && c <= '9';
    value = value * 10 + static_cast<unsigned long>(c - '0');
  }
  if (!ok || value == 0 || value > 65535) {
    error = "bad port in endpoint " + std::string(endpoint);
    return false;
  }
  port = static_cast<std::uint16_t>(value);
  return true;
}

}  // namespace

Dealer::Dealer(std::size_t max_frame_bytes) : max_frame_bytes_(max_frame_bytes), in_(kReadAhead) {}

bool Dealer::connect(std::string_view endpoint) {
  close({});
  std::string host;
  std::uint16_t port = 0;
  if (!parse_endpoint(endpoint, host, port, error_) || !socket_.connect(host, port, error_)) return false;
  state_ = State::Connecting;
  return true;
}

void Dealer::close(std::string_view why) {
  socket_.close();
  state_ = State::Closed;
  error_.assign(why.data(), why.size());
  in_pos_ = in_end_ = 0;
  out_.clear();
  out_pos_ = 0;
  in_multipart_ = false;
}

bool Dealer::pump() {
  if (state_ == State::Closed) return false;
  if (state_ == State::Connecting) {
    std::string why;
    switch (socket_.finish_connect(why)) {
      case net::Io::WouldBlock: return true;
      case net::Io::Ok:
        state_ = State::Greeting;
        zmtp::append_greeting(out_);
        break;
      default:
        close("cannot connect to the sidecar: " + why);
        return false;
    }
  }
  if (!fill()) return false;
  if (state_ != State::Open && !handshake()) return false;
  return flush();
}

bool Dealer::fill() {
  if (in_pos_ > 0) {  // keep unparsed bytes at the front, so the buffer never needs to grow for them
    std::memmove(in_.data(), in_.data() + in_pos_, in_end_ - in_pos_);
    in_end_ -= in_pos_;
    in_pos_ = 0;
  }
  if (in_end_ == in_.size() && state_ == State::Open) {  // full: make room if one frame is bigger
    zmtp::Frame frame;
    std::size_t need = 0;
    if (zmtp::parse_frame(in_.data(), in_end_, max_frame_bytes_, frame, need) == zmtp::Parse::NeedMore &&
        need > in_.size()) {
      in_.resize(need);
    }
  }
  while (in_end_ < in_.size()) {
    const std::size_t room = in_.size() - in_end_;
    std::size_t got = 0;
    std::string why;
    switch (socket_.recv(in_.data() + in_end_, room, got, why)) {
      case net::Io::Ok:
        in_end_ += got;
        received_ += got;
        if (got < room) return true;  // a short read: the kernel had no more
        break;
      case net::Io::WouldBlock: return true;
      case net::Io::Closed: close("the sidecar closed the connection"); return false;
      case net::Io::Failed: close("connection to the sidecar failed: " + why); return false;
    }
  }
  return true;
}

bool Dealer::handshake() {
  if (state_ == State::Greeting) {
    if (in_end_ - in_pos_ < zmtp::kGreetingSize) return true;
    if (!zmtp::greeting_ok(in_.data() + in_pos_)) {
      close("the peer is not a ZMTP 3 endpoint with the NULL mechanism");
      return false;
    }
    in_pos_ += zmtp::kGreetingSize;
    zmtp::append_ready(out_, "DEALER");
    state_ = State::Handshaking;
  }
  zmtp::Frame frame;
  std::size_t used = 0;
  switch (zmtp::parse_frame(in_.data() + in_pos_, in_end_ - in_pos_, max_frame_bytes_, frame, used)) {
    case zmtp::Parse::NeedMore: return true;
    case zmtp::Parse::Ok:
      if (frame.command && zmtp::ready_socket_type(frame.body, frame.size) == "ROUTER") {
        in_pos_ += used;
        state_ = State::Open;
        return true;
      }
      break;
    default: break;
  }
  close("the peer did not answer with READY from a ROUTER socket");
  return false;
}

bool Dealer::flush() {
  while (out_pos_ < out_.size()) {
    std::size_t sent = 0;
    std::string why;
    switch (socket_.send(out_.data() + out_pos_, out_.size() - out_pos_, sent, why)) {
      case net::Io::Ok: out_pos_ += sent; break;
      case net::Io::WouldBlock: return true;
      default: close("cannot send to the sidecar: " + why); return false;
    }
  }
  out_.clear();  // keeps its capacity: steady-state sends do not allocate
  out_pos_ = 0;
  return true;
}

bool Dealer::next(const std::uint8_t*& body, std::size_t& size) {
  while (state_ == State::Open) {
    zmtp::Frame frame;
    std::size_t used = 0;
    switch (zmtp::parse_frame(in_.data() + in_pos_, in_end_ - in_pos_, max_frame_bytes_, frame, used)) {
      case zmtp::Parse::NeedMore: return false;
      case zmtp::Parse::Malformed: close("the sidecar sent a malformed ZMTP frame"); return false;
      case zmtp::Parse::TooLarge: close("the sidecar sent a frame over max_frame_bytes"); return false;
      case zmtp::Parse::Ok: break;
    }
    in_pos_ += used;
    if (frame.command) continue;  // e.g. PING: libzmq sends none unless heartbeats are configured
    const bool multipart = in_multipart_ || frame.more;
    in_multipart_ = frame.more;
    if (multipart) {
      if (!frame.more) ++dropped_;
      continue;
    }
    body = frame.body;
    size = frame.size;
    return true;
  }
  return false;
}

bool Dealer::send(const std::uint8_t* body, std::size_t size) {
  if (state_ != State::Open) return false;
  zmtp::append_frame(out_, body, size);
  return flush();
}

}  // namespace npcai
