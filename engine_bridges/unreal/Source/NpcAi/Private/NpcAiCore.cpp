// UBT compiles only the sources under a module's folder: the engine-agnostic core (in
// ../../core, built and tested on its own with CMake) is compiled here, as one unit.
#include "CoreMinimal.h"

#if PLATFORM_WINDOWS
#include "Windows/AllowWindowsPlatformTypes.h"
#endif
THIRD_PARTY_INCLUDES_START
#include "msgpack.cpp"
#include "zmtp.cpp"
#include "socket.cpp"
#include "dealer.cpp"
#include "client.cpp"
#include "process.cpp"
#include "launcher.cpp"
THIRD_PARTY_INCLUDES_END
#if PLATFORM_WINDOWS
#include "Windows/HideWindowsPlatformTypes.h"
#endif
