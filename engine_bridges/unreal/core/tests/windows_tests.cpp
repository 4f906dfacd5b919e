// The core's _WIN32 branches (Winsock, CreateProcess, the child's environment block, the stdout
// pipe read through PeekNamedPipe), built with MinGW and run under Wine by
// tests/test_bridge_unreal_windows.py, against a real sidecar on loopback started there.
//
//   windows_tests.exe CASE...       the cases; $NPCAI_WIN_ENDPOINT names the sidecar, $NPCAI_WIN_TOKEN its token
//   windows_tests.exe child WHAT... a child the cases start (this same program): it echoes its
//                                   arguments, prints a variable, sleeps, or stands in for
//                                   `npcai serve` by announcing the real sidecar's endpoint
//
// Wine runs Windows programs only as Windows children: a Linux sidecar started through CreateProcess
// would leave no process handle to watch. So the launcher's child here is this program, announcing the
// real sidecar, and every request then goes to that sidecar through Winsock.

#ifndef _WIN32
#error "windows_tests.cpp tests the _WIN32 branches: build it for Windows (MinGW)"
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "game_loop.hpp"
#include "npcai/launcher.hpp"

#define WIN32_LEAN_AND_MEAN
#include <windows.h>

using npcai::Handle;
using npcai::msgpack::Value;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kChildExit = 3;

std::string self_path() {
  char path[MAX_PATH];
  const DWORD n = GetModuleFileNameA(nullptr, path, MAX_PATH);
  return std::string(path, n);
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// The child: what it prints is read back through its stdout pipe.
int child(int argc, char** argv) {
  const std::string what = argc > 2 ? argv[2] : "";
  if (what == "echo") {  // each argument on a line of its own, in brackets (an empty one shows)
    for (int i = 3; i < argc; ++i) std::printf("[%s]\n", argv[i]);
    std::fflush(stdout);
    return kChildExit;
  }
  if (what == "env") {  // the variables named, NAME=[VALUE]; and whether PATH came through
    for (int i = 3; i < argc; ++i) std::printf("%s=[%s]\n", argv[i], env(argv[i]).c_str());
    std::printf("PATH inherited: %s\n", env("PATH").empty() ? "no" : "yes");
    std::fflush(stdout);
    return 0;
  }
  if (what == "sidecar") {  // `npcai serve` as the launcher starts it: announce, then run until stopped
    if (env("NPCAI_TOKEN") != env("NPCAI_WIN_TOKEN")) {
      std::fprintf(stderr, "the token did not reach the child's environment\n");
      return 4;
    }
    std::printf("loading models...\nNPCAI READY %s\n", env("NPCAI_WIN_ENDPOINT").c_str());
    std::fflush(stdout);
  }
  Sleep(60000);  // "sleep", and the sidecar's stand-in: until killed
  return 0;
}

std::string read_all(npcai::Process& p, int timeout_ms) {
  std::string out;
  char buf[256];
  const auto until = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Clock::now() < until) {
    const std::size_t n = p.read_stdout(buf, sizeof buf);
    out.append(buf, n);
    if (n == 0 && !p.running()) {
      while (const std::size_t rest = p.read_stdout(buf, sizeof buf)) out.append(buf, rest);
      break;
    }
    if (n == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return out;
}

struct Events : npcai::Listener {
  std::map<Handle, std::string> kind, text, value;
  std::map<Handle, Value> reply;
  void on_token(Handle h, std::string_view chunk) override { text[h] += chunk; }
  void on_done(Handle h, const npcai::Result& r) override {
    kind[h] = "done";
    reply[h] = r.reply;
    if (r.value.is_str()) value[h] = std::string(r.value.as_str());
  }
  void on_error(Handle h, std::string_view code, std::string_view message) override {
    kind[h] = "error " + std::string(code) + ": " + std::string(message);
  }
  void on_cancelled(Handle h) override { kind[h] = "cancelled"; }
};

using check::game_loop;

}  // namespace

CASE(a_childs_arguments_arrive_whole_and_its_exit_code_and_output_come_back) {
  const std::vector<std::string> args = {"plain", "with space", "quote\"d", "back\\slash", "trail\\", "tail space\\",
                                         "", "two  spaces", "\"quoted whole\""};
  npcai::Process p;
  npcai::Process::Spec spec;
  spec.argv = {self_path(), "child", "echo"};
  spec.argv.insert(spec.argv.end(), args.begin(), args.end());
  std::string error;
  REQUIRE(p.start(spec, error), error);
  CHECK(p.pid() > 0);
  const std::string out = read_all(p, 20000);
  std::string expected;
  for (const std::string& a : args) expected += "[" + a + "]\n";
  std::string got;  // the child's stdout is in text mode: "\r\n" line ends
  for (const char c : out) {
    if (c != '\r') got += c;
  }
  CHECK(got == expected, got);
  CHECK(p.exit_code() == kChildExit, std::to_string(p.exit_code()));
}

CASE(variables_set_for_a_child_reach_it_over_the_inherited_ones) {
  SetEnvironmentVariableA("NPCAI_WIN_OVERRIDDEN", "the parent's");
  npcai::Process p;
  npcai::Process::Spec spec;
  spec.argv = {self_path(), "child", "env", "NPCAI_WIN_SECRET", "npcai_win_overridden"};
  spec.env = {{"NPCAI_WIN_SECRET", "a secret, with spaces=and equals"}, {"npcai_win_overridden", "the child's"}};
  std::string error;
  REQUIRE(p.start(spec, error), error);
  std::string got;
  for (const char c : read_all(p, 20000)) {
    if (c != '\r') got += c;
  }
  // Windows names ignore case: the child's value replaces the parent's, whatever the case it was set in
  CHECK(got == "NPCAI_WIN_SECRET=[a secret, with spaces=and equals]\nnpcai_win_overridden=[the child's]\n"
               "PATH inherited: yes\n",
        got);
  CHECK(p.exit_code() == 0, std::to_string(p.exit_code()));
}

CASE(a_child_is_ended_by_kill) {
  npcai::Process p;
  npcai::Process::Spec spec;
  spec.argv = {self_path(), "child", "sleep"};
  std::string error;
  REQUIRE(p.start(spec, error), error);
  CHECK(p.running());
  const auto start = Clock::now();
  p.kill();
  CHECK(!p.running());
  CHECK(Clock::now() - start < std::chrono::seconds(5));
  CHECK(p.exit_code() == 1, std::to_string(p.exit_code()));  // TerminateProcess's code
}

CASE(a_missing_program_fails_to_start_with_a_reason) {
  npcai::Process p;
  npcai::Process::Spec spec;
  spec.argv = {"C:\\no\\such\\npcai-program.exe"};
  std::string error;
  CHECK(!p.start(spec, error));
  CHECK(error.find("cannot start C:\\no\\such\\npcai-program.exe") == 0, error);
}

CASE(a_bundle_is_found_by_its_exe_name_in_folders_and_in_a_semicolon_path) {
  const std::string dir = env("TEMP") + "\\npcai-win-bundle";
  CreateDirectoryA(dir.c_str(), nullptr);
  std::ofstream(dir + "\\npcai-sidecar.exe") << "MZ";
  CHECK(npcai::find_sidecar_bundle({"C:\\nowhere", dir}, false) == dir + "/npcai-sidecar.exe",
        npcai::find_sidecar_bundle({"C:\\nowhere", dir}, false));
  const std::string path = env("PATH");
  _putenv_s("PATH", ("C:\\nowhere;" + dir + "\\;" + path).c_str());  // what getenv, and so the search, reads
  CHECK(npcai::find_sidecar_bundle({}, true) == dir + "\\npcai-sidecar.exe", npcai::find_sidecar_bundle({}, true));
  _putenv_s("PATH", path.c_str());
  DeleteFileA((dir + "\\npcai-sidecar.exe").c_str());
  RemoveDirectoryA(dir.c_str());
  CHECK(npcai::find_sidecar_bundle({dir}, false).empty());
}

CASE(the_launcher_reads_the_ready_line_connects_over_winsock_and_the_sidecar_answers) {
  REQUIRE(!env("NPCAI_WIN_ENDPOINT").empty(), "set NPCAI_WIN_ENDPOINT to a running sidecar's tcp endpoint");
  Events events;
  npcai::LauncherConfig config;
  config.use_bundle = false;
  config.command = {self_path(), "child", "sidecar"};  // announces the real sidecar: see the top of this file
  config.token = env("NPCAI_WIN_TOKEN");
  config.client_name = "npcai-unreal-windows";
  config.ready_timeout_ms = 30000;
  npcai::Launcher launcher(events, config);
  REQUIRE(launcher.launch(), launcher.error());
  const bool ready = game_loop(
      launcher, [&] { return launcher.ready() || launcher.state() == npcai::Launcher::State::Failed; }, 60000);
  REQUIRE(ready && launcher.ready(), launcher.error());
  CHECK(launcher.endpoint() == env("NPCAI_WIN_ENDPOINT"), launcher.endpoint());
  CHECK(launcher.hello_reply()["protocol"].as_int() == 1);

  npcai::Client& client = launcher.client();
  const Handle npc = client.npc("brom", "You are Brom, the blacksmith of Oakvale.", 7);
  const Handle decide = client.decide("brom", "A goblin runs into the forge with a knife.", {"attack", "flee", "hide"});
  npcai::Options line;
  line.max_tokens = 12;
  const Handle say = client.say("brom", "Good morning, Brom!", line);
  const Handle ping = client.ping();
  std::vector<Handle> pings;  // many replies in flight at once: frames split and joined across recv()s
  for (int i = 0; i < 200; ++i) pings.push_back(client.ping());
  REQUIRE(game_loop(launcher, [&] { return events.kind.size() == 4 + pings.size(); }, 60000),
          std::to_string(events.kind.size()) + " of " + std::to_string(4 + pings.size()) + " ended");
  CHECK(events.kind[npc] == "done", events.kind[npc]);
  CHECK(events.kind[decide] == "done", events.kind[decide]);
  const std::string chosen = events.value[decide];
  CHECK(chosen == "attack" || chosen == "flee" || chosen == "hide", chosen);
  CHECK(events.kind[say] == "done", events.kind[say]);
  CHECK(!events.text[say].empty());
  CHECK(events.kind[ping] == "done", events.kind[ping]);
  for (const Handle h : pings) CHECK(events.kind[h] == "done", events.kind[h]);
  std::printf("  over Winsock: chose %s; said \"%s\"\n", chosen.c_str(), events.text[say].c_str());

  launcher.stop();  // asks the sidecar to shut down (the test then sees it exit), ends the child
  CHECK(launcher.sidecar_pid() == 0);
  CHECK(launcher.state() == npcai::Launcher::State::Idle, npcai::to_string(launcher.state()));
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "child") return child(argc, argv);
  return check::run_all(argc, argv);
}
