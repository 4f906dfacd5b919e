#include "npcai/socket.hpp"

#include <cstring>
#include <string>

#ifdef _WIN32
#ifndef NOMINMAX
#define NOMINMAX  // windows.h must not define min/max macros: this code calls std::min
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#if defined(NPCAI_UNREAL)
// Inside Unreal the Windows headers go through UE's wrappers, which keep its own types apart.
#include "Windows/AllowWindowsPlatformTypes.h"
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#if defined(NPCAI_UNREAL)
#include "Windows/HideWindowsPlatformTypes.h"
#endif
#ifdef _MSC_VER
#pragma comment(lib, "ws2_32.lib")  // MSVC links Winsock by this; other compilers by their build (CMake: ws2_32)
#endif
#else
#include <arpa/inet.h>
#include <cerrno>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

namespace npcai::net {

namespace {

#ifdef _WIN32
using Native = SOCKET;
using pollfd_t = WSAPOLLFD;
int last_socket_error() { return WSAGetLastError(); }
bool would_block(int e) { return e == WSAEWOULDBLOCK; }
bool in_progress(int e) { return e == WSAEWOULDBLOCK || e == WSAEINPROGRESS; }
int poll_now(pollfd_t* p) { return WSAPoll(p, 1, 0); }
void close_native(Native s) { closesocket(s); }
constexpr int kSendFlags = 0;
std::string describe(int e) { return "socket error " + std::to_string(e); }
bool set_nonblocking(Native s) {
  u_long on = 1;
  return ioctlsocket(s, FIONBIO, &on) == 0;
}
bool startup() {
  static const bool ok = [] {
    WSADATA data;
    return WSAStartup(MAKEWORD(2, 2), &data) == 0;
  }();
  return ok;
}
#else
using Native = int;
using pollfd_t = struct pollfd;
int last_socket_error() { return errno; }
bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK; }
bool in_progress(int e) { return e == EINPROGRESS; }
int poll_now(pollfd_t* p) { return ::poll(p, 1, 0); }
void close_native(Native s) { ::close(s); }
#ifdef MSG_NOSIGNAL
constexpr int kSendFlags = MSG_NOSIGNAL;  // a dead peer must not raise SIGPIPE in the game
#else
constexpr int kSendFlags = 0;
#endif
std::string describe(int e) { return std::strerror(e); }
bool set_nonblocking(Native s) {
  const int flags = fcntl(s, F_GETFL, 0);
  return flags >= 0 && fcntl(s, F_SETFL, flags | O_NONBLOCK) == 0 && fcntl(s, F_SETFD, FD_CLOEXEC) == 0;
}
bool startup() { return true; }
#endif

Native native(std::intptr_t fd) { return static_cast<Native>(fd); }

}  // namespace

bool TcpSocket::connect(std::string_view host, std::uint16_t port, std::string& error) {
  close();
  if (!startup()) {
    error = "cannot initialise sockets";
    return false;
  }
  sockaddr_storage addr{};
  socklen_t len = 0;
  const std::string h(host);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (inet_pton(AF_INET, h.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof *v4;
  } else if (inet_pton(AF_INET6, h.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof *v6;
  } else {
    error = "not a numeric address: " + h;
    return false;
  }
  const Native s = ::socket(addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
  if (s == static_cast<Native>(kNone)) {
    error = describe(last_socket_error());
    return false;
  }
  fd_ = static_cast<std::intptr_t>(s);
  const int one = 1;  // requests are small and latency-bound: never wait to coalesce them
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&one), sizeof one);
#ifdef SO_NOSIGPIPE
  setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
  if (!set_nonblocking(s)) {
    error = describe(last_socket_error());
    close();
    return false;
  }
  if (::connect(s, reinterpret_cast<sockaddr*>(&addr), len) != 0 && !in_progress(last_socket_error())) {
    error = describe(last_socket_error());
    close();
    return false;
  }
  return true;
}

Io TcpSocket::finish_connect(std::string& error) {
  pollfd_t p{};
  p.fd = native(fd_);
  p.events = POLLOUT;
  const int n = poll_now(&p);
  if (n == 0) return Io::WouldBlock;
  int err = 0;
  socklen_t len = sizeof err;
  if (n < 0) {
    err = last_socket_error();
  } else if (getsockopt(native(fd_), SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&err), &len) != 0) {
    err = last_socket_error();
  }
  if (err == 0) return Io::Ok;
  error = describe(err);
  return Io::Failed;
}

Io TcpSocket::recv(std::uint8_t* buf, std::size_t size, std::size_t& done, std::string& error) {
  const auto n = ::recv(native(fd_), reinterpret_cast<char*>(buf), static_cast<int>(size), 0);
  if (n > 0) {
    done = static_cast<std::size_t>(n);
    return Io::Ok;
  }
  if (n == 0) return Io::Closed;
  const int e = last_socket_error();
  if (would_block(e)) return Io::WouldBlock;
  error = describe(e);
  return Io::Failed;
}

Io TcpSocket::send(const std::uint8_t* buf, std::size_t size, std::size_t& done, std::string& error) {
  const auto n = ::send(native(fd_), reinterpret_cast<const char*>(buf), static_cast<int>(size), kSendFlags);
  if (n >= 0) {
    done = static_cast<std::size_t>(n);
    return Io::Ok;
  }
  const int e = last_socket_error();
  if (would_block(e)) return Io::WouldBlock;
  error = describe(e);
  return Io::Failed;
}

void TcpSocket::close() {
  if (fd_ != kNone) close_native(native(fd_));
  fd_ = kNone;
}

}  // namespace npcai::net
