// A non-blocking TCP client socket: the one place that touches the OS socket API
// (POSIX, with a small _WIN32 branch for Winsock).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace npcai::net {

enum class Io { Ok, WouldBlock, Closed, Failed };

class TcpSocket {
 public:
  TcpSocket() = default;
  ~TcpSocket() { close(); }
  TcpSocket(const TcpSocket&) = delete;
  TcpSocket& operator=(const TcpSocket&) = delete;

  // Starts connecting to a numeric IPv4/IPv6 address (never a DNS lookup: that could block).
  // False, with `error` set, when it fails at once.
  bool connect(std::string_view host, std::uint16_t port, std::string& error);
  // While connecting: WouldBlock, then Ok once connected or Failed (with `error`).
  Io finish_connect(std::string& error);
  // Ok with `done` > 0 bytes, WouldBlock, Closed (the peer closed), or Failed (`error` set).
  Io recv(std::uint8_t* buf, std::size_t size, std::size_t& done, std::string& error);
  Io send(const std::uint8_t* buf, std::size_t size, std::size_t& done, std::string& error);
  void close();
  bool is_open() const { return fd_ != kNone; }

 private:
  static constexpr std::intptr_t kNone = -1;
  std::intptr_t fd_ = kNone;  // an int on POSIX, a SOCKET on Windows
};

}  // namespace npcai::net
