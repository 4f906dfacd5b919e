// Runs the sidecar for the game: starts `npcai serve` as a child (or attaches to a running
// one), learns its endpoint, connects, says hello, and stops it at quit. Every step is a state
// advanced by poll(), so the game thread never waits on the sidecar.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "npcai/client.hpp"
#include "npcai/process.hpp"

namespace npcai {

// The self-contained sidecar that `npcai bundle --out DIR` writes: DIR/npcai-sidecar(.exe),
// which takes exactly `npcai serve`'s flags.
#ifdef _WIN32
inline constexpr const char* kSidecarExecutable = "npcai-sidecar.exe";
#else
inline constexpr const char* kSidecarExecutable = "npcai-sidecar";
#endif

// The first `kSidecarExecutable` found: in each of `dirs` in order, then (if `search_path`) in
// each folder of the PATH environment variable. Empty if there is none.
std::string find_sidecar_bundle(const std::vector<std::string>& dirs, bool search_path = true);

struct LauncherConfig {
  // Where a shipped sidecar bundle may lie, searched in order before PATH (the UE layer passes
  // <Project>/npcai and the executable's folder). Where `npcai-sidecar` is found (here or on
  // PATH) it is started with serve's flags and `command` is not used.
  std::vector<std::string> bundle_dirs;
  bool use_bundle = true;  // false: skip that search and always run `command`
  // The program, then its own arguments, each passed whole (a path may hold spaces); "serve ..." follows.
  std::vector<std::string> command{"npcai"};
  std::vector<std::string> extra_args;         // after serve's own flags, e.g. {"--model", "NAME"}
  std::string endpoint = "tcp://127.0.0.1:0";  // where the sidecar binds (port 0: any free port)
  std::string ready_file;  // set: learn the endpoint from this file (--ready-file), not from stdout
  std::string log_file;    // set: the sidecar's stderr goes to this file; empty: it shares ours
  std::string client_name = "npcai-unreal";
  std::string token;       // shared secret: passed in the child's environment ($NPCAI_TOKEN), sent in hello
  int ready_timeout_ms = 120000;  // loading models; a first run may also download the default one
  int stop_timeout_ms = 2000;     // stop(): wait this long in all before killing the child
  ClientConfig client;
};

class Launcher final : private Listener {
 public:
  enum class State { Idle, Starting, Connecting, Greeting, Ready, Failed };

  // `events` receives the events of every request made through client(), not of the
  // launcher's own hello and shutdown.
  Launcher(Listener& events, LauncherConfig config);
  ~Launcher() override { stop(); }

  // Starts a sidecar child (stopping the previous one first). False, with error(), if it
  // could not even be started; it may still fail later (state() Failed).
  bool launch();
  // Uses a sidecar that is already running at `endpoint`; stop() then leaves it running.
  bool attach(std::string_view endpoint);
  // Call once per frame: advances startup, then polls the client. Returns replies dispatched.
  int poll();
  // For quitting: sends shutdown to a child we started, waits up to stop_timeout_ms for it to
  // exit (terminating, then killing it if it does not), and drops the connection. Open
  // requests end with `unavailable` at the next poll(), if there is one. Blocks for at most
  // stop_timeout_ms.
  void stop();

  State state() const { return state_; }
  bool ready() const { return state_ == State::Ready; }
  const std::string& error() const { return error_; }    // why it failed
  const std::string& endpoint() const { return endpoint_; }
  const msgpack::Value& hello_reply() const { return hello_reply_; }  // server, models, limits, pid
  long long sidecar_pid() const { return process_.pid(); }             // 0 when attached or exited
  // The program the last launch() ran: a found npcai-sidecar's path, or command[0].
  const std::string& program() const { return program_; }
  Client& client() { return client_; }

 private:
  using Clock = std::chrono::steady_clock;

  Listener& events_;
  LauncherConfig config_;
  Client client_;
  Process process_;
  State state_ = State::Idle;
  bool own_child_ = false;
  std::string endpoint_;
  std::string error_;
  std::string program_;
  std::string line_;  // the stdout line being read
  Handle hello_ = 0;         // the hello of the current connection
  std::vector<Handle> own_;  // our own open requests (hello, shutdown): the game never sees them
  msgpack::Value hello_reply_;
  Clock::time_point ready_deadline_;
  Clock::time_point next_child_check_;

  void watch_start();
  bool read_ready_line();
  bool read_ready_file();
  void drain_stdout();
  void fail(std::string why);
  bool own_ended(Handle h);

  void on_token(Handle h, std::string_view text) override { events_.on_token(h, text); }
  void on_sentence(Handle h, std::string_view text) override { events_.on_sentence(h, text); }
  void on_step(Handle h, const msgpack::Value& step) override { events_.on_step(h, step); }
  void on_action(Handle h, std::string_view npc, std::string_view name, const msgpack::Value& args) override {
    events_.on_action(h, npc, name, args);
  }
  void on_done(Handle h, const Result& result) override;
  void on_error(Handle h, std::string_view code, std::string_view message) override;
  void on_cancelled(Handle h) override {
    if (!own_ended(h)) events_.on_cancelled(h);
  }
};

const char* to_string(Launcher::State state);

}  // namespace npcai
