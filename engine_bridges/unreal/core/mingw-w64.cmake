# Cross-compiling the core for 64-bit Windows with MinGW-w64 (Debian: g++-mingw-w64-x86-64), which
# builds its _WIN32 branches and their tests (tests/windows_tests.cpp):
#   cmake -S engine_bridges/unreal/core -B engine_bridges/unreal/core/build/windows -DCMAKE_TOOLCHAIN_FILE=engine_bridges/unreal/core/mingw-w64.cmake
# The POSIX threads flavour of the compiler: std::thread, which the tests use, needs it.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(CMAKE_CXX_COMPILER x86_64-w64-mingw32-g++-posix)
set(CMAKE_RC_COMPILER x86_64-w64-mingw32-windres)
set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
