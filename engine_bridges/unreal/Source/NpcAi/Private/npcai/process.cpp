#include "npcai/process.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <thread>

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
#include <windows.h>
#if defined(NPCAI_UNREAL)
#include "Windows/HideWindowsPlatformTypes.h"
#endif
#else
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
extern char** environ;
#endif

namespace npcai {

bool Process::wait(int timeout_ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (running()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

namespace {

// One argument as the MSVC runtime splits command lines: quotes, with backslashes doubled
// only where they precede a quote.
std::string quote_arg(const std::string& arg) {
  if (!arg.empty() && arg.find_first_of(" \t\"") == std::string::npos) return arg;
  std::string out = "\"";
  std::size_t slashes = 0;
  for (const char c : arg) {
    if (c == '\\') {
      ++slashes;
      continue;
    }
    out.append(c == '"' ? 2 * slashes + 1 : slashes, '\\');
    slashes = 0;
    out += c;
  }
  out.append(2 * slashes, '\\');
  return out + "\"";
}

}  // namespace

std::string windows_command_line(const std::vector<std::string>& argv) {
  std::string line;
  for (const std::string& arg : argv) line += (line.empty() ? "" : " ") + quote_arg(arg);
  return line;
}

std::vector<std::string> child_environment(std::vector<std::string> current,
                                           const std::vector<std::pair<std::string, std::string>>& set) {
#ifdef _WIN32
  constexpr bool kIgnoreCase = true;
#else
  constexpr bool kIgnoreCase = false;
#endif
  const auto named = [](const std::string& entry, const std::string& name) {
    if (entry.size() <= name.size() || entry[name.size()] != '=') return false;
    for (std::size_t i = 0; i < name.size(); ++i) {
      const char a = entry[i];
      const char b = name[i];
      if (kIgnoreCase ? std::toupper(static_cast<unsigned char>(a)) != std::toupper(static_cast<unsigned char>(b))
                      : a != b) {
        return false;
      }
    }
    return true;
  };
  for (const auto& [name, value] : set) {
    current.erase(std::remove_if(current.begin(), current.end(),
                                 [&](const std::string& entry) { return named(entry, name); }),
                  current.end());
    current.push_back(name + "=" + value);
  }
  return current;
}

#ifdef _WIN32

namespace {

HANDLE as_handle(std::intptr_t h) { return reinterpret_cast<HANDLE>(h); }

}  // namespace

bool Process::start(const Spec& spec, std::string& error) {
  kill();
  exit_code_ = -1;
  if (spec.argv.empty()) {
    error = "no command to start";
    return false;
  }
  SECURITY_ATTRIBUTES inherit{sizeof(SECURITY_ATTRIBUTES), nullptr, TRUE};
  HANDLE read_end = nullptr;
  HANDLE write_end = nullptr;
  if (!CreatePipe(&read_end, &write_end, &inherit, 0)) {
    error = "cannot create a pipe: error " + std::to_string(GetLastError());
    return false;
  }
  SetHandleInformation(read_end, HANDLE_FLAG_INHERIT, 0);
  HANDLE err = INVALID_HANDLE_VALUE;
  if (!spec.stderr_file.empty()) {
    err = CreateFileA(spec.stderr_file.c_str(), GENERIC_WRITE, FILE_SHARE_READ, &inherit, CREATE_ALWAYS,
                      FILE_ATTRIBUTE_NORMAL, nullptr);
  }
  STARTUPINFOA startup{};
  startup.cb = sizeof startup;
  startup.dwFlags = STARTF_USESTDHANDLES;
  startup.hStdInput = GetStdHandle(STD_INPUT_HANDLE);
  startup.hStdOutput = write_end;
  startup.hStdError = err != INVALID_HANDLE_VALUE ? err : GetStdHandle(STD_ERROR_HANDLE);
  std::string command_line = windows_command_line(spec.argv);
  std::string environment;  // empty: the child inherits ours
  if (!spec.env.empty()) {
    std::vector<std::string> current;
    if (char* block = GetEnvironmentStringsA()) {
      for (const char* entry = block; *entry; entry += std::strlen(entry) + 1) current.emplace_back(entry);
      FreeEnvironmentStringsA(block);
    }
    std::vector<std::string> entries = child_environment(std::move(current), spec.env);
    // CreateProcess wants the block sorted by name, ignoring case.
    const auto upper_name = [](const std::string& entry) {
      std::string name = entry.substr(0, entry.find('=', 1));
      for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      return name;
    };
    std::stable_sort(entries.begin(), entries.end(),
                     [&](const std::string& a, const std::string& b) { return upper_name(a) < upper_name(b); });
    for (const std::string& entry : entries) environment.append(entry).push_back('\0');
    environment.push_back('\0');
  }
  PROCESS_INFORMATION info{};
  const BOOL ok = CreateProcessA(nullptr, command_line.data(), nullptr, nullptr, TRUE, CREATE_NO_WINDOW,
                                 environment.empty() ? nullptr : environment.data(), nullptr, &startup, &info);
  const DWORD why = GetLastError();
  CloseHandle(write_end);
  if (err != INVALID_HANDLE_VALUE) CloseHandle(err);
  if (!ok) {
    CloseHandle(read_end);
    error = "cannot start " + spec.argv[0] + ": error " + std::to_string(why);
    return false;
  }
  CloseHandle(info.hThread);
  pid_ = info.dwProcessId;
  handle_ = reinterpret_cast<std::intptr_t>(info.hProcess);
  stdout_ = reinterpret_cast<std::intptr_t>(read_end);
  return true;
}

std::size_t Process::read_stdout(char* buf, std::size_t size) {
  DWORD available = 0;
  if (stdout_ == -1 || !PeekNamedPipe(as_handle(stdout_), nullptr, 0, nullptr, &available, nullptr) || !available) {
    return 0;
  }
  DWORD got = 0;
  const DWORD want = available < size ? available : static_cast<DWORD>(size);
  return ReadFile(as_handle(stdout_), buf, want, &got, nullptr) ? got : 0;
}

bool Process::running() {
  if (!pid_) return false;
  if (WaitForSingleObject(as_handle(handle_), 0) == WAIT_TIMEOUT) return true;
  DWORD code = 0;
  GetExitCodeProcess(as_handle(handle_), &code);
  exit_code_ = static_cast<int>(code);
  CloseHandle(as_handle(handle_));
  handle_ = 0;
  pid_ = 0;
  return false;
}

void Process::terminate() {  // Windows has no polite signal for a console-less child
  if (pid_) TerminateProcess(as_handle(handle_), 1);
}

void Process::kill() {
  if (pid_) {
    TerminateProcess(as_handle(handle_), 1);
    WaitForSingleObject(as_handle(handle_), 5000);
    running();
  }
  close_stdout();
}

void Process::close_stdout() {
  if (stdout_ != -1) CloseHandle(as_handle(stdout_));
  stdout_ = -1;
}

long long current_process_id() { return static_cast<long long>(GetCurrentProcessId()); }

bool is_executable_file(const std::string& path) {
  const DWORD attributes = GetFileAttributesA(path.c_str());
  return attributes != INVALID_FILE_ATTRIBUTES && !(attributes & FILE_ATTRIBUTE_DIRECTORY);
}

#else

bool Process::start(const Spec& spec, std::string& error) {
  kill();
  exit_code_ = -1;
  if (spec.argv.empty()) {
    error = "no command to start";
    return false;
  }
  int fds[2];
  if (pipe(fds) != 0) {
    error = std::string("cannot create a pipe: ") + std::strerror(errno);
    return false;
  }
  // Only the child's dup2'ed stdout survives exec; our read end never blocks the game.
  fcntl(fds[0], F_SETFD, FD_CLOEXEC);
  fcntl(fds[1], F_SETFD, FD_CLOEXEC);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  if (!spec.stderr_file.empty()) {
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, spec.stderr_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
  }
  // The game may block or ignore signals on its threads; the sidecar must see SIGTERM.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigset_t defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> entries;
  if (!spec.env.empty()) {
    for (char** entry = environ; *entry; ++entry) entries.emplace_back(*entry);
    entries = child_environment(std::move(entries), spec.env);
  }
  std::vector<char*> envp;
  for (const std::string& entry : entries) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);
  pid_t pid = 0;
  const int rc =
      posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), spec.env.empty() ? environ : envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    error = "cannot start " + spec.argv[0] + ": " + std::strerror(rc);
    return false;
  }
  pid_ = pid;
  stdout_ = fds[0];
  return true;
}

std::size_t Process::read_stdout(char* buf, std::size_t size) {
  if (stdout_ == -1) return 0;
  const ssize_t n = ::read(static_cast<int>(stdout_), buf, size);
  if (n > 0) return static_cast<std::size_t>(n);
  if (n == 0) close_stdout();  // EOF: the child closed it (or exited)
  return 0;
}

bool Process::running() {
  if (!pid_) return false;
  int status = 0;
  const pid_t r = waitpid(static_cast<pid_t>(pid_), &status, WNOHANG);
  if (r == 0) return true;
  if (r == static_cast<pid_t>(pid_)) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  pid_ = 0;  // reaped (or not ours any more): never signal that pid again
  return false;
}

void Process::terminate() {
  if (pid_) ::kill(static_cast<pid_t>(pid_), SIGTERM);
}

void Process::kill() {
  if (pid_) {
    ::kill(static_cast<pid_t>(pid_), SIGKILL);
    int status = 0;
    if (waitpid(static_cast<pid_t>(pid_), &status, 0) == static_cast<pid_t>(pid_)) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    pid_ = 0;
  }
  close_stdout();
}

void Process::close_stdout() {
  if (stdout_ != -1) ::close(static_cast<int>(stdout_));
  stdout_ = -1;
}

long long current_process_id() { return static_cast<long long>(getpid()); }

bool is_executable_file(const std::string& path) {
  struct stat info {};
  return !path.empty() && stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && access(path.c_str(), X_OK) == 0;
}

#endif

}  // namespace npcai
