// A child process with a non-blocking pipe from its stdout: the one place that touches the OS
// process API (POSIX posix_spawn, with a _WIN32 branch for CreateProcess).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace npcai {

class Process {
 public:
  struct Spec {
    std::vector<std::string> argv;  // argv[0] is looked up in PATH; each argument is passed whole
    std::string stderr_file;        // the child's stderr goes here (truncated); empty: inherited
    // NAME, VALUE pairs set in the child's environment, over the game's own (which it inherits):
    // for secrets, which any user of the machine could read in a command line.
    std::vector<std::pair<std::string, std::string>> env;
  };

  Process() = default;
  ~Process() { kill(); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Starts the child. False, with `error` set, if it could not be started.
  bool start(const Spec& spec, std::string& error);
  // Copies what the child has written to stdout since the last call, without blocking.
  std::size_t read_stdout(char* buf, std::size_t size);
  // True while the child runs; once it has exited, reaps it and exit_code() is set.
  bool running();
  // Exit status, or 128 + signal number when a signal ended it; -1 while unknown.
  int exit_code() const { return exit_code_; }
  // Waits up to `timeout_ms` for the child to exit; true once it has.
  bool wait(int timeout_ms);
  void terminate();  // asks the child to exit (SIGTERM)
  void kill();       // ends it now and reaps it
  long long pid() const { return pid_; }

 private:
  long long pid_ = 0;         // 0: no child
  std::intptr_t stdout_ = -1;  // read end of the child's stdout pipe
  std::intptr_t handle_ = 0;   // Windows: the process handle
  int exit_code_ = -1;

  void close_stdout();
};

long long current_process_id();

// True if `path` names a file this process may run (POSIX: a regular file with execute
// permission; Windows: an existing file that is not a folder).
bool is_executable_file(const std::string& path);

// argv as one Windows command line, each argument quoted so that the MSVC runtime splits it back
// whole (CreateProcess takes a single string). Used on Windows; defined everywhere so it is tested.
std::string windows_command_line(const std::vector<std::string>& argv);

// `current` (NAME=VALUE entries) with each of `set` in place of any entry of the same name
// (names compared ignoring case on Windows): the environment Process::start gives a child.
std::vector<std::string> child_environment(std::vector<std::string> current,
                                           const std::vector<std::pair<std::string, std::string>>& set);

}  // namespace npcai
