// Per-frame cost of the pump against a real sidecar: Launcher::poll() when nothing is waiting
// (idle) and when 16 ping replies are waiting (busy): microseconds per call (p50, p99, max) and
// heap allocations per call, counted by replacing the global operator new.
//
//   npcai_bench_poll [--quick]      (NPCAI_PYTHON picks the interpreter, default python3)
//
// Exit code 1 when an idle poll allocates, or the sidecar cannot be started; timings are
// reported against the targets but do not fail the run (shared machines are noisy).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "npcai/launcher.hpp"

namespace {
std::size_t g_allocations = 0;  // the benchmark is single-threaded: plain counters do
std::size_t g_bytes = 0;
}  // namespace

void* operator new(std::size_t size) {
  ++g_allocations;
  g_bytes += size;
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

using Clock = std::chrono::steady_clock;

struct Stats {
  std::vector<double> us;
  std::size_t allocations = 0;
  std::size_t bytes = 0;

  double pct(double p) const {
    std::vector<double> v = us;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
  }
  void print(const char* what) const {
    const double n = static_cast<double>(us.size());
    std::printf("%-24s %7zu calls  p50 %7.2f us  p99 %7.2f us  max %8.2f us  %.3f allocations (%.1f bytes) per call\n",
                what, us.size(), pct(0.50), pct(0.99), pct(1.0), static_cast<double>(allocations) / n,
                static_cast<double>(bytes) / n);
  }
};

// Times one call of `f`, counting what it allocates into `stats`.
template <class F>
int measure(Stats& stats, F f) {
  const std::size_t a = g_allocations;
  const std::size_t b = g_bytes;
  const auto t0 = Clock::now();
  const int result = f();
  const auto t1 = Clock::now();
  stats.allocations += g_allocations - a;
  stats.bytes += g_bytes - b;
  stats.us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  return result;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  const int idle_calls = quick ? 20000 : 200000;
  const int busy_calls = quick ? 200 : 2000;
  constexpr int kReplies = 16;

  npcai::Listener ignore;
  npcai::LauncherConfig config;
  const char* python = std::getenv("NPCAI_PYTHON");
  config.command = {python && *python ? python : "python3", "-m", "npcai"};
  config.client.max_messages_per_poll = 64;
  npcai::Launcher launcher(ignore, config);
  if (!launcher.launch()) return std::fprintf(stderr, "launch: %s\n", launcher.error().c_str()), 1;
  const auto until = Clock::now() + std::chrono::seconds(90);
  while (!launcher.ready() && launcher.state() != npcai::Launcher::State::Failed && Clock::now() < until) {
    launcher.poll();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (!launcher.ready()) return std::fprintf(stderr, "sidecar not ready: %s\n", launcher.error().c_str()), 1;

  std::printf("machine: %u cores, %s\n", std::thread::hardware_concurrency(), cpu_model().c_str());
  npcai::Client& client = launcher.client();

  // Busy first, so buffers have reached their steady-state size; its first rounds are warm-up.
  Stats warmup;
  Stats busy;
  int complete = 0;
  for (int round = -20; round < busy_calls; ++round) {
    for (int i = 0; i < kReplies; ++i) client.ping();
    std::this_thread::sleep_for(std::chrono::milliseconds(3));  // let all 16 replies arrive
    const int handled = measure(round < 0 ? warmup : busy, [&] { return launcher.poll(); });
    if (round >= 0 && handled == kReplies) ++complete;
    while (client.pending() > 0) launcher.poll();  // any stragglers, untimed
  }

  Stats idle;
  for (int i = 0; i < 1000; ++i) launcher.poll();
  for (int i = 0; i < idle_calls; ++i) measure(idle, [&] { return launcher.poll(); });

  idle.print("idle poll");
  busy.print("busy poll (16 replies)");
  std::printf("busy polls that dispatched all 16 replies: %d of %d\n", complete, busy_calls);
  const bool idle_alloc_ok = idle.allocations == 0;
  std::printf("targets: idle p99 < 5 us: %s; busy p99 < 100 us: %s; no allocation per idle poll: %s\n",
              idle.pct(0.99) < 5 ? "met" : "MISSED", busy.pct(0.99) < 100 ? "met" : "MISSED",
              idle_alloc_ok ? "met" : "MISSED");
  launcher.stop();
  return idle_alloc_ok ? 0 : 1;
}
