#include "NpcAiConvert.h"

#include "Dom/JsonObject.h"
#include "Dom/JsonValue.h"
#include "Misc/Base64.h"
#include "Serialization/JsonReader.h"
#include "Serialization/JsonSerializer.h"
#include "Serialization/JsonWriter.h"

using npcai::msgpack::Type;
using npcai::msgpack::Value;

namespace
{
	TSharedPtr<FJsonValue> ToJsonValue(const Value& In)
	{
		switch (In.type())
		{
		case Type::Nil:
			return MakeShared<FJsonValueNull>();
		case Type::Bool:
			return MakeShared<FJsonValueBoolean>(In.as_bool());
		case Type::Int:
		case Type::UInt:
		case Type::Float32:
		case Type::Float64:
			return MakeShared<FJsonValueNumber>(In.as_double());
		case Type::Str:
			return MakeShared<FJsonValueString>(NpcAiConvert::FromUtf8(In.as_str()));
		case Type::Bin:
			return MakeShared<FJsonValueString>(
				FBase64::Encode(reinterpret_cast<const uint8*>(In.as_str().data()), static_cast<uint32>(In.as_str().size())));
		case Type::Array:
		{
			TArray<TSharedPtr<FJsonValue>> Items;
			for (std::size_t I = 0; I < In.size(); ++I)
			{
				Items.Add(ToJsonValue(In.at(I)));
			}
			return MakeShared<FJsonValueArray>(Items);
		}
		case Type::Map:
		{
			TSharedRef<FJsonObject> Object = MakeShared<FJsonObject>();
			for (std::size_t I = 0; I < In.size(); ++I)
			{
				Object->SetField(NpcAiConvert::FromUtf8(In.key(I).as_str()), ToJsonValue(In.val(I)));
			}
			return MakeShared<FJsonValueObject>(Object);
		}
		}
		return MakeShared<FJsonValueNull>();
	}

	Value FromJsonValue(const TSharedPtr<FJsonValue>& In)
	{
		switch (In.IsValid() ? In->Type : EJson::Null)
		{
		case EJson::Boolean:
			return Value(In->AsBool());
		case EJson::Number:
		{
			// JSON has one number type; schemas want integers where they wrote them.
			const double Number = In->AsNumber();
			const bool bIntegral = FMath::IsFinite(Number) && Number == FMath::FloorToDouble(Number) && FMath::Abs(Number) < 9.0e15;
			return bIntegral ? Value(static_cast<long long>(Number)) : Value(Number);
		}
		case EJson::String:
			return Value(NpcAiConvert::ToUtf8(In->AsString()));
		case EJson::Array:
		{
			Value Out = Value::array();
			for (const TSharedPtr<FJsonValue>& Item : In->AsArray())
			{
				Out.push(FromJsonValue(Item));
			}
			return Out;
		}
		case EJson::Object:
		{
			Value Out = Value::map();
			for (const TPair<FString, TSharedPtr<FJsonValue>>& Field : In->AsObject()->Values)  // insertion order
			{
				Out.set(NpcAiConvert::ToUtf8(Field.Key), FromJsonValue(Field.Value));
			}
			return Out;
		}
		default:
			return Value();
		}
	}
}

namespace NpcAiConvert
{
	std::string ToUtf8(const FString& Text)
	{
		const FTCHARToUTF8 Utf8(*Text);
		return std::string(Utf8.Get(), Utf8.Length());
	}

	FString FromUtf8(std::string_view Text)
	{
		const FUTF8ToTCHAR Wide(Text.data(), static_cast<int32>(Text.size()));
		return FString(Wide.Length(), Wide.Get());
	}

	FString ToJson(const Value& In)
	{
		FString Out;
		const TSharedRef<TJsonWriter<TCHAR, TCondensedJsonPrintPolicy<TCHAR>>> Writer =
			TJsonWriterFactory<TCHAR, TCondensedJsonPrintPolicy<TCHAR>>::Create(&Out);
		FJsonSerializer::Serialize(ToJsonValue(In), FString(), Writer);
		return Out;
	}

	bool FromJson(const FString& Json, Value& Out)
	{
		TSharedPtr<FJsonValue> Root;
		if (!FJsonSerializer::Deserialize(TJsonReaderFactory<TCHAR>::Create(Json), Root) || !Root.IsValid())
		{
			return false;
		}
		Out = FromJsonValue(Root);
		return true;
	}
}
