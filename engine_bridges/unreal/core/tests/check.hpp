// A tiny test runner (no test framework to download): CASE(name) { CHECK(...); REQUIRE(...); }
// Cases run in the order they are defined; each prints "PASS name" or "FAIL name" with the
// failed checks. Arguments name the cases to run (default: all). Exit code 1 if any failed.
#pragma once

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace check {

struct Case {
  const char* name;
  void (*run)();
};

inline std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, void (*run)()) { cases().push_back({name, run}); }
};

inline void fail(const char* file, int line, const char* what, const std::string& detail = {}) {
  ++failures();
  std::printf("  %s:%d: %s%s%s\n", file, line, what, detail.empty() ? "" : " -- ", detail.c_str());
  std::fflush(stdout);
}

inline int run_all(int argc, char** argv, int first_arg = 1) {
  int passed = 0;
  int failed = 0;
  for (const Case& c : cases()) {
    bool selected = argc <= first_arg;
    for (int i = first_arg; i < argc; ++i) selected = selected || std::strcmp(argv[i], c.name) == 0;
    if (!selected) continue;
    failures() = 0;
    c.run();
    std::printf("%s %s\n", failures() ? "FAIL" : "PASS", c.name);
    std::fflush(stdout);
    (failures() ? failed : passed) += 1;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

}  // namespace check

#define CASE(name)                                             \
  static void name();                                          \
  static const check::Register register_##name(#name, name);  \
  static void name()

// CHECK records a failure and goes on; REQUIRE also leaves the case. Optional extra
// arguments form a detail string shown on failure.
#define CHECK(cond, ...) \
  ((cond) ? (void)0 : check::fail(__FILE__, __LINE__, "CHECK(" #cond ")", std::string(__VA_ARGS__)))
#define REQUIRE(cond, ...)                                                                 \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      check::fail(__FILE__, __LINE__, "REQUIRE(" #cond ")", std::string(__VA_ARGS__));    \
      return;                                                                              \
    }                                                                                      \
  } while (0)
