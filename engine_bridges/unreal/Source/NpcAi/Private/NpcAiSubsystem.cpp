#include "NpcAiSubsystem.h"

#include "HAL/PlatformProcess.h"
#include "HAL/PlatformTime.h"
#include "Misc/Paths.h"
#include "NpcAiConvert.h"

THIRD_PARTY_INCLUDES_START
#include "npcai/launcher.hpp"
THIRD_PARTY_INCLUDES_END

DEFINE_LOG_CATEGORY_STATIC(LogNpcAi, Log, All);

using NpcAiConvert::FromUtf8;
using NpcAiConvert::ToUtf8;

// Owns the core's launcher and turns its events into the subsystem's delegates. Everything
// runs on the game thread, inside Tick.
class FNpcAiBridge final : public npcai::Listener
{
public:
	FNpcAiBridge(UNpcAiSubsystem& InOwner, npcai::LauncherConfig Config)
		: Owner(InOwner), Launcher(*this, std::move(Config))
	{
	}

	UNpcAiSubsystem& Owner;  // owns this bridge, so outlives it
	npcai::Launcher Launcher;

	virtual void on_token(npcai::Handle Handle, std::string_view Text) override
	{
		Owner.OnToken.Broadcast(static_cast<int32>(Handle), FromUtf8(Text));
	}

	virtual void on_sentence(npcai::Handle Handle, std::string_view Text) override
	{
		Owner.OnSentence.Broadcast(static_cast<int32>(Handle), FromUtf8(Text));
	}

	virtual void on_step(npcai::Handle Handle, const npcai::msgpack::Value& Step) override
	{
		FNpcAiStep Out;
		Out.Handle = static_cast<int32>(Handle);
		Out.Step = static_cast<int32>(Step["step"].as_int());
		Out.As = FromUtf8(Step["as"].as_str());
		const npcai::msgpack::Value& Value = Step["value"];
		Out.Value = Value.is_str() ? FromUtf8(Value.as_str()) : Value.is_nil() ? FString() : NpcAiConvert::ToJson(Value);
		Out.bUsedFallback = Step["used_fallback"].as_bool();
		Out.StepJson = NpcAiConvert::ToJson(Step);
		Owner.OnStep.Broadcast(Out);
	}

	virtual void on_action(npcai::Handle Handle, std::string_view Npc, std::string_view Name, const npcai::msgpack::Value& Args) override
	{
		Owner.OnActionRequested.Broadcast(static_cast<int32>(Handle), FromUtf8(Npc), FromUtf8(Name), NpcAiConvert::ToJson(Args));
	}

	virtual void on_done(npcai::Handle Handle, const npcai::Result& Result) override
	{
		FNpcAiResult Out;
		Out.Handle = static_cast<int32>(Handle);
		if (Result.value.is_str())
		{
			Out.Value = FromUtf8(Result.value.as_str());
		}
		else if (!Result.value.is_nil())
		{
			Out.Value = NpcAiConvert::ToJson(Result.value);
		}
		Out.Text = FromUtf8(Result.text);
		Out.FinishReason = FromUtf8(Result.finish_reason);
		Out.bTimedOut = Result.timed_out;
		Out.bUsedFallback = Result.used_fallback;
		const npcai::msgpack::Value& Probs = Result.reply["probs"];
		for (std::size_t I = 0; Probs.is_map() && I < Probs.size(); ++I)
		{
			Out.Probs.Add(FromUtf8(Probs.key(I).as_str()), static_cast<float>(Probs.val(I).as_double()));
		}
		Out.ReplyJson = NpcAiConvert::ToJson(Result.reply);
		if (Result.action)
		{
			Out.ActionName = FromUtf8((*Result.action)["name"].as_str());
			Out.ActionArgsJson = NpcAiConvert::ToJson((*Result.action)["args"]);
		}
		Owner.OnDone.Broadcast(Out);
	}

	virtual void on_error(npcai::Handle Handle, std::string_view Code, std::string_view Message) override
	{
		Owner.OnError.Broadcast(static_cast<int32>(Handle), FromUtf8(Code), FromUtf8(Message));
	}

	virtual void on_cancelled(npcai::Handle Handle) override
	{
		Owner.OnCancelled.Broadcast(static_cast<int32>(Handle));
	}
};

namespace
{
	npcai::Options MakeOptions(int32 MaxTokens, int32 DeadlineMs)
	{
		npcai::Options Options;
		Options.max_tokens = FMath::Max(0, MaxTokens);
		Options.deadline_ms = DeadlineMs;
		return Options;
	}

	std::vector<std::string> ToUtf8List(const TArray<FString>& Items)
	{
		std::vector<std::string> Out;
		for (const FString& Item : Items)
		{
			Out.push_back(ToUtf8(Item));
		}
		return Out;
	}

	// FallbackJson (empty: none) into Options; false, with a warning, when it is not JSON.
	bool SetJsonFallback(const TCHAR* What, const FString& FallbackJson, npcai::Options& Options)
	{
		if (FallbackJson.IsEmpty())
		{
			return true;
		}
		npcai::msgpack::Value Fallback;
		if (!NpcAiConvert::FromJson(FallbackJson, Fallback))
		{
			UE_LOG(LogNpcAi, Warning, TEXT("%s: FallbackJson is not JSON"), What);
			return false;
		}
		Options.fallback = std::move(Fallback);
		return true;
	}
}

void UNpcAiSubsystem::Initialize(FSubsystemCollectionBase& Collection)
{
	Super::Initialize(Collection);
	if (bStartOnInitialize)
	{
		StartSidecar();
	}
}

void UNpcAiSubsystem::Deinitialize()
{
	StopSidecar();
	Super::Deinitialize();
}

void UNpcAiSubsystem::StartSidecar()
{
	npcai::LauncherConfig Config;
	Config.use_bundle = bUseSidecarBundle;
	Config.bundle_dirs = {
		ToUtf8(FPaths::ConvertRelativePathToFull(FPaths::ProjectDir() / TEXT("npcai"))),  // staged by Build.cs
		ToUtf8(FPaths::ConvertRelativePathToFull(FPlatformProcess::BaseDir())),             // beside the executable
		ToUtf8(FPaths::ConvertRelativePathToFull(FString(FPlatformProcess::BaseDir()) / TEXT("npcai"))),
	};
	Config.command = {ToUtf8(SidecarProgram)};  // each argument whole: never split on spaces
	for (const FString& Arg : SidecarProgramArgs)
	{
		Config.command.push_back(ToUtf8(Arg));
	}
	for (const FString& Arg : SidecarArgs)
	{
		Config.extra_args.push_back(ToUtf8(Arg));
	}
	Config.log_file = ToUtf8(FPaths::ConvertRelativePathToFull(FPaths::ProjectLogDir() / TEXT("npcai-sidecar.log")));
	Config.client_name = "unreal";
	Config.client.max_messages_per_poll = FMath::Max(1, MaxMessagesPerFrame);
	Config.client.poll_budget_us = FMath::Max(1, FrameBudgetMicroseconds);
	Config.client.frame_report_every = FMath::Clamp(FrameReportEvery, 1, static_cast<int32>(npcai::Client::kMaxFrameBatch));

	Bridge.Reset();  // stops the previous sidecar, if any
	Bridge = MakeShared<FNpcAiBridge>(*this, std::move(Config));
	const bool bStarted = AttachEndpoint.IsEmpty() ? Bridge->Launcher.launch() : Bridge->Launcher.attach(ToUtf8(AttachEndpoint));
	if (!bStarted)
	{
		UE_LOG(LogNpcAi, Warning, TEXT("npcai sidecar: %s"), *FromUtf8(Bridge->Launcher.error()));
	}
	else if (AttachEndpoint.IsEmpty())
	{
		UE_LOG(LogNpcAi, Log, TEXT("npcai sidecar: started %s"), *FromUtf8(Bridge->Launcher.program()));
	}
	LastState = static_cast<uint8>(npcai::Launcher::State::Idle);
}

void UNpcAiSubsystem::StopSidecar()
{
	if (Bridge.IsValid())
	{
		Bridge->Launcher.stop();
		Bridge.Reset();
	}
}

bool UNpcAiSubsystem::IsReady() const
{
	return Bridge.IsValid() && Bridge->Launcher.ready();
}

FString UNpcAiSubsystem::GetSidecarError() const
{
	return Bridge.IsValid() ? FromUtf8(Bridge->Launcher.error()) : FString(TEXT("not started"));
}

int32 UNpcAiSubsystem::DefineNpc(const FString& Npc, const FString& Persona, int32 Seed)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	std::optional<long long> OptionalSeed;
	if (Seed >= 0)
	{
		OptionalSeed = Seed;
	}
	return static_cast<int32>(Bridge->Launcher.client().npc(ToUtf8(Npc), ToUtf8(Persona), OptionalSeed));
}

int32 UNpcAiSubsystem::Say(const FString& Npc, const FString& Text, int32 MaxTokens, int32 DeadlineMs, const FString& Fallback)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	npcai::Options Options = MakeOptions(MaxTokens, DeadlineMs);
	if (!Fallback.IsEmpty())
	{
		Options.fallback = npcai::msgpack::Value(ToUtf8(Fallback));
	}
	return static_cast<int32>(Bridge->Launcher.client().say(ToUtf8(Npc), ToUtf8(Text), Options));
}

int32 UNpcAiSubsystem::Decide(const FString& Npc, const FString& Situation, const TArray<FString>& Choices, int32 DeadlineMs, const FString& Fallback)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	std::vector<std::string> Options8;
	for (const FString& Choice : Choices)
	{
		Options8.push_back(ToUtf8(Choice));
	}
	npcai::Options Options = MakeOptions(0, DeadlineMs);
	if (!Fallback.IsEmpty())
	{
		Options.fallback = npcai::msgpack::Value(ToUtf8(Fallback));
	}
	return static_cast<int32>(Bridge->Launcher.client().decide(ToUtf8(Npc), ToUtf8(Situation), Options8, Options));
}

int32 UNpcAiSubsystem::DecideSchema(const FString& Npc, const FString& Situation, const FString& SchemaJson, int32 DeadlineMs, const FString& FallbackJson)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	npcai::msgpack::Value Schema;
	if (!NpcAiConvert::FromJson(SchemaJson, Schema) || !Schema.is_map())
	{
		UE_LOG(LogNpcAi, Warning, TEXT("DecideSchema: SchemaJson is not a JSON object"));
		return 0;
	}
	npcai::Options Options = MakeOptions(0, DeadlineMs);
	if (!FallbackJson.IsEmpty())
	{
		npcai::msgpack::Value Fallback;
		if (!NpcAiConvert::FromJson(FallbackJson, Fallback))
		{
			UE_LOG(LogNpcAi, Warning, TEXT("DecideSchema: FallbackJson is not JSON"));
			return 0;
		}
		Options.fallback = std::move(Fallback);
	}
	return static_cast<int32>(Bridge->Launcher.client().decide_schema(ToUtf8(Npc), ToUtf8(Situation), Schema, Options));
}

int32 UNpcAiSubsystem::DefineNpcWithActions(const FString& Npc, const FString& Persona, const FString& ActionsJson, int32 Seed)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	npcai::msgpack::Value Actions;
	if (!NpcAiConvert::FromJson(ActionsJson, Actions) || !Actions.is_array())
	{
		UE_LOG(LogNpcAi, Warning, TEXT("DefineNpcWithActions: ActionsJson is not a JSON array"));
		return 0;
	}
	std::optional<long long> OptionalSeed;
	if (Seed >= 0)
	{
		OptionalSeed = Seed;
	}
	return static_cast<int32>(Bridge->Launcher.client().npc_with_actions(ToUtf8(Npc), ToUtf8(Persona), Actions, OptionalSeed));
}

int32 UNpcAiSubsystem::SayAndAct(const FString& Npc, const FString& Text, const TArray<FString>& ActionNames, int32 MaxTokens, int32 DeadlineMs, const FString& Fallback)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	npcai::Options Options = MakeOptions(MaxTokens, DeadlineMs);
	if (!Fallback.IsEmpty())
	{
		Options.fallback = npcai::msgpack::Value(ToUtf8(Fallback));
	}
	npcai::msgpack::Value Allowed = npcai::msgpack::Value(true);
	if (ActionNames.Num() > 0)
	{
		Allowed = npcai::msgpack::Value::array();
		for (const FString& Name : ActionNames)
		{
			Allowed.push(ToUtf8(Name));
		}
	}
	Options.extra = npcai::msgpack::Value::map();
	Options.extra.set("actions", std::move(Allowed));
	return static_cast<int32>(Bridge->Launcher.client().say(ToUtf8(Npc), ToUtf8(Text), Options));
}

int32 UNpcAiSubsystem::DecideAction(const FString& Npc, const FString& Situation, const TArray<FString>& ActionNames, int32 DeadlineMs, const FString& FallbackJson)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	npcai::Options Options = MakeOptions(0, DeadlineMs);
	if (!SetJsonFallback(TEXT("DecideAction"), FallbackJson, Options))
	{
		return 0;
	}
	return static_cast<int32>(Bridge->Launcher.client().decide_action(ToUtf8(Npc), ToUtf8(Situation), ToUtf8List(ActionNames), Options));
}

int32 UNpcAiSubsystem::ActResult(const FString& Npc, const FString& Name, const FString& Result)
{
	return Bridge.IsValid() ? static_cast<int32>(Bridge->Launcher.client().act_result(ToUtf8(Npc), ToUtf8(Name), ToUtf8(Result))) : 0;
}

int32 UNpcAiSubsystem::Chain(const FString& StepsJson, int32 DeadlineMs, const FString& FallbackJson)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	npcai::msgpack::Value Steps;
	if (!NpcAiConvert::FromJson(StepsJson, Steps) || !Steps.is_array())
	{
		UE_LOG(LogNpcAi, Warning, TEXT("Chain: StepsJson is not a JSON array"));
		return 0;
	}
	npcai::Options Options = MakeOptions(0, DeadlineMs);
	if (!SetJsonFallback(TEXT("Chain"), FallbackJson, Options))
	{
		return 0;
	}
	return static_cast<int32>(Bridge->Launcher.client().chain(Steps, Options));
}

int32 UNpcAiSubsystem::Observe(const FString& Npc, const FString& Text)
{
	return Bridge.IsValid() ? static_cast<int32>(Bridge->Launcher.client().observe(ToUtf8(Npc), ToUtf8(Text))) : 0;
}

int32 UNpcAiSubsystem::Forget(const FString& Npc)
{
	return Bridge.IsValid() ? static_cast<int32>(Bridge->Launcher.client().forget(ToUtf8(Npc))) : 0;
}

int32 UNpcAiSubsystem::SetBudget(int32 Threads, float TokensPerSecond, float Share, float FrameMs)
{
	if (!Bridge.IsValid())
	{
		return 0;
	}
	npcai::Budget Budget;
	if (Threads >= 0)
	{
		Budget.threads = Threads;
	}
	if (TokensPerSecond >= 0.f)
	{
		Budget.tokens_per_s = TokensPerSecond;
	}
	if (Share >= 0.f)
	{
		Budget.share = Share;
	}
	if (FrameMs >= 0.f)
	{
		Budget.frame_ms = FrameMs;
	}
	return static_cast<int32>(Bridge->Launcher.client().set_budget(Budget));
}

int32 UNpcAiSubsystem::GetBackoffLevel() const
{
	return Bridge.IsValid() ? Bridge->Launcher.client().backoff_level() : 0;
}

bool UNpcAiSubsystem::Cancel(int32 Handle)
{
	return Bridge.IsValid() && Bridge->Launcher.client().cancel(Handle);
}

void UNpcAiSubsystem::Tick(float DeltaTime)
{
	npcai::Launcher& Launcher = Bridge->Launcher;
	if (bReportFrameTimes && Launcher.ready())
	{
		// Only buffered here; poll() sends a `frame` report every FrameReportEvery frames.
		Launcher.client().report_frame(static_cast<double>(DeltaTime) * 1000.0);
	}
	Launcher.poll();  // bounded: MaxMessagesPerFrame, FrameBudgetMicroseconds

	const npcai::Launcher::State State = Launcher.state();
	if (static_cast<uint8>(State) != LastState)
	{
		LastState = static_cast<uint8>(State);
		if (State == npcai::Launcher::State::Ready)
		{
			UE_LOG(LogNpcAi, Log, TEXT("npcai sidecar ready at %s"), *FromUtf8(Launcher.endpoint()));
			if (bReportFrameTimes && TargetFrameMs > 0.f)
			{
				// A (re)started sidecar knows no frame target; its `ok` is dispatched to OnDone.
				SetBudget(-1, -1.f, -1.f, TargetFrameMs);
			}
			OnSidecarStateChanged.Broadcast(true, FromUtf8(Launcher.endpoint()));
		}
		else if (State == npcai::Launcher::State::Failed)
		{
			UE_LOG(LogNpcAi, Warning, TEXT("npcai sidecar failed: %s"), *FromUtf8(Launcher.error()));
			RelaunchAt = FPlatformTime::Seconds() + RelaunchDelaySeconds;
			OnSidecarStateChanged.Broadcast(false, FromUtf8(Launcher.error()));
		}
	}
	// A sidecar we started (not one we attached to) is started again after a failure, at most
	// once per RelaunchDelaySeconds (also when it cannot even be started).
	if (State == npcai::Launcher::State::Failed && RelaunchDelaySeconds > 0.f && AttachEndpoint.IsEmpty() &&
		FPlatformTime::Seconds() >= RelaunchAt)
	{
		RelaunchAt = FPlatformTime::Seconds() + RelaunchDelaySeconds;
		Launcher.launch();
	}
}

TStatId UNpcAiSubsystem::GetStatId() const
{
	RETURN_QUICK_DECLARE_CYCLE_STAT(UNpcAiSubsystem, STATGROUP_Tickables);
}

ETickableTickType UNpcAiSubsystem::GetTickableTickType() const
{
	return IsTemplate() ? ETickableTickType::Never : ETickableTickType::Conditional;
}

bool UNpcAiSubsystem::IsTickable() const
{
	return Bridge.IsValid();
}
