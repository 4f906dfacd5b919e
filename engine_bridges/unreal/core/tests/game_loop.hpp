// The tests' game loop: poll the launcher once a frame until `done()` (true) or `timeout_ms` passes (false),
// as a game thread would, never blocking on the sidecar.
#pragma once

#include <chrono>
#include <thread>

#include "npcai/launcher.hpp"

namespace check {

inline constexpr auto kFrame = std::chrono::milliseconds(2);

template <class Done>
bool game_loop(npcai::Launcher& launcher, Done done, int timeout_ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    launcher.poll();
    std::this_thread::sleep_for(kFrame);
  }
  return true;
}

}  // namespace check
