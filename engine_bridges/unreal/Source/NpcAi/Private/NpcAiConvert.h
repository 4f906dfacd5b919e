// Conversions between Unreal types and the core's: UTF-8 text, and msgpack values as JSON.
#pragma once

#include "CoreMinimal.h"

THIRD_PARTY_INCLUDES_START
#include "npcai/msgpack.hpp"
THIRD_PARTY_INCLUDES_END

namespace NpcAiConvert
{
	std::string ToUtf8(const FString& Text);
	FString FromUtf8(std::string_view Text);

	// nil, bool, numbers, strings, arrays and maps as JSON; bin as a base64 string.
	FString ToJson(const npcai::msgpack::Value& Value);

	// Parses JSON into a value (integral numbers become ints). False if Json is not JSON.
	bool FromJson(const FString& Json, npcai::msgpack::Value& Out);
}
