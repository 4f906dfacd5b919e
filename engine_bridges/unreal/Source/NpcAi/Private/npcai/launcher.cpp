#include "npcai/launcher.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace npcai {

namespace {

constexpr std::string_view kReadyPrefix = "NPCAI READY ";
constexpr const char* kTokenVariable = "NPCAI_TOKEN";  // docs/PROTOCOL.md, "Launching"
constexpr std::size_t kMaxLine = 1024;  // longer stdout lines are not the READY line: cut them
constexpr auto kChildCheckEvery = std::chrono::milliseconds(250);

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  return s;
}

}  // namespace

std::string find_sidecar_bundle(const std::vector<std::string>& dirs, bool search_path) {
#ifdef _WIN32
  constexpr char kListSeparator = ';';
#else
  constexpr char kListSeparator = ':';
#endif
  std::vector<std::string> folders = dirs;
  const char* path = search_path ? std::getenv("PATH") : nullptr;
  for (std::string_view rest = path ? path : ""; !rest.empty();) {
    const std::size_t end = std::min(rest.find(kListSeparator), rest.size());
    if (end > 0) folders.emplace_back(rest.substr(0, end));
    rest.remove_prefix(std::min(end + 1, rest.size()));
  }
  for (const std::string& folder : folders) {
    if (folder.empty()) continue;
    std::string candidate = folder;
    if (candidate.back() != '/' && candidate.back() != '\\') candidate += '/';
    candidate += kSidecarExecutable;
    if (is_executable_file(candidate)) return candidate;
  }
  return {};
}

Launcher::Launcher(Listener& events, LauncherConfig config)
    : events_(events), config_(std::move(config)), client_(*this, config_.client) {}

bool Launcher::launch() {
  stop();
  error_.clear();
  line_.clear();
  hello_reply_ = msgpack::Value();
  Process::Spec spec;
  const std::string bundle = config_.use_bundle ? find_sidecar_bundle(config_.bundle_dirs) : std::string();
  if (!bundle.empty()) {
    spec.argv = {bundle};  // the bundle's executable is `npcai serve` itself: no "serve"
  } else {
    spec.argv = config_.command;
    spec.argv.emplace_back("serve");
  }
  program_ = spec.argv.empty() ? std::string() : spec.argv.front();
  spec.argv.emplace_back("--endpoint");
  spec.argv.push_back(config_.endpoint);
  spec.argv.emplace_back("--parent-pid");  // the sidecar exits by itself if the game dies
  spec.argv.push_back(std::to_string(current_process_id()));
  if (!config_.ready_file.empty()) {
    std::remove(config_.ready_file.c_str());  // a stale file would announce a dead endpoint
    spec.argv.emplace_back("--ready-file");
    spec.argv.push_back(config_.ready_file);
  }
  // In the child's environment, not its arguments: any user of the machine can read a command line.
  if (!config_.token.empty()) spec.env.emplace_back(kTokenVariable, config_.token);
  spec.argv.insert(spec.argv.end(), config_.extra_args.begin(), config_.extra_args.end());
  spec.stderr_file = config_.log_file;

  std::string why;
  if (!process_.start(spec, why)) {
    fail(why);
    return false;
  }
  own_child_ = true;
  state_ = State::Starting;
  ready_deadline_ = Clock::now() + std::chrono::milliseconds(config_.ready_timeout_ms);
  return true;
}

bool Launcher::attach(std::string_view endpoint) {
  stop();
  error_.clear();
  hello_reply_ = msgpack::Value();
  endpoint_.assign(endpoint.data(), endpoint.size());
  state_ = State::Connecting;
  if (!client_.connect(endpoint_)) {
    fail("cannot connect to " + endpoint_ + ": " + client_.error());
    return false;
  }
  return true;
}

int Launcher::poll() {
  if (state_ == State::Starting) watch_start();
  const int handled = client_.poll();  // also when failed: it ends the requests of a lost connection
  switch (state_) {
    case State::Connecting:
      if (client_.state() == Client::State::Open) {
        hello_ = client_.hello(config_.client_name, config_.token);
        own_.push_back(hello_);
        state_ = State::Greeting;
      } else if (client_.state() == Client::State::Closed) {
        fail("cannot connect to " + endpoint_ + ": " + client_.error());
      }
      break;
    case State::Greeting:
    case State::Ready:
      if (client_.state() != Client::State::Open) {
        fail("lost the sidecar: " + client_.error());
      } else if (own_child_) {
        const Clock::time_point now = Clock::now();
        if (now >= next_child_check_) {  // a few times a second, not every frame: syscalls
          next_child_check_ = now + kChildCheckEvery;
          drain_stdout();
          if (!process_.running()) fail("the sidecar exited with code " + std::to_string(process_.exit_code()));
        }
      }
      break;
    default: break;
  }
  return handled;
}

void Launcher::stop() {
  if (own_child_ && process_.running()) {
    if (client_.state() == Client::State::Open) own_.push_back(client_.shutdown());  // written at once
    const int half = config_.stop_timeout_ms / 2;
    if (!process_.wait(half)) {
      process_.terminate();
      process_.wait(half);
    }
  }
  client_.close();
  process_.kill();  // no-op once reaped; otherwise it overstayed its timeout
  own_child_ = false;
  hello_ = 0;
  state_ = State::Idle;
}

void Launcher::watch_start() {
  const bool found = config_.ready_file.empty() ? read_ready_line() : read_ready_file();
  if (found) {
    state_ = State::Connecting;
    if (!client_.connect(endpoint_)) fail("cannot connect to " + endpoint_ + ": " + client_.error());
  } else if (!process_.running()) {
    fail("the sidecar exited with code " + std::to_string(process_.exit_code()) + " before it was ready" +
         (config_.log_file.empty() ? std::string() : "; see " + config_.log_file));
  } else if (Clock::now() >= ready_deadline_) {
    process_.kill();
    fail("the sidecar was not ready within " + std::to_string(config_.ready_timeout_ms) + " ms");
  }
}

bool Launcher::read_ready_line() {
  char buf[512];
  for (std::size_t n; (n = process_.read_stdout(buf, sizeof buf)) > 0;) {
    for (std::size_t i = 0; i < n; ++i) {
      if (buf[i] != '\n') {
        if (line_.size() < kMaxLine) line_ += buf[i];
        continue;
      }
      const std::string_view line(line_);
      if (line.substr(0, kReadyPrefix.size()) == kReadyPrefix) {
        endpoint_ = trim(line.substr(kReadyPrefix.size()));
        line_.clear();
        return true;
      }
      line_.clear();
    }
  }
  return false;
}

bool Launcher::read_ready_file() {
  drain_stdout();  // unread, a chatty child would fill the pipe and block
  std::FILE* f = std::fopen(config_.ready_file.c_str(), "rb");
  if (!f) return false;
  char buf[512];
  const std::size_t n = std::fread(buf, 1, sizeof buf, f);
  std::fclose(f);
  const std::string_view text = trim(std::string_view(buf, n));
  if (text.empty()) return false;
  endpoint_ = text;
  return true;
}

void Launcher::drain_stdout() {
  char buf[512];
  while (process_.read_stdout(buf, sizeof buf) > 0) {
  }
}

void Launcher::fail(std::string why) {
  if (state_ == State::Failed) return;
  state_ = State::Failed;
  error_ = std::move(why);
  hello_ = 0;
}

bool Launcher::own_ended(Handle h) {
  const auto it = std::find(own_.begin(), own_.end(), h);
  if (it == own_.end()) return false;
  own_.erase(it);
  return true;
}

void Launcher::on_done(Handle h, const Result& result) {
  if (!own_ended(h)) return events_.on_done(h, result);
  if (h != hello_) return;
  hello_ = 0;
  hello_reply_ = result.reply;
  error_.clear();
  state_ = State::Ready;
}

void Launcher::on_error(Handle h, std::string_view code, std::string_view message) {
  if (!own_ended(h)) return events_.on_error(h, code, message);
  if (h != hello_) return;  // a hello or shutdown of a connection already given up
  fail("hello failed: " + std::string(code) + ": " + std::string(message));
}

const char* to_string(Launcher::State state) {
  switch (state) {
    case Launcher::State::Idle: return "idle";
    case Launcher::State::Starting: return "starting";
    case Launcher::State::Connecting: return "connecting";
    case Launcher::State::Greeting: return "greeting";
    case Launcher::State::Ready: return "ready";
    case Launcher::State::Failed: return "failed";
  }
  return "?";
}

}  // namespace npcai
