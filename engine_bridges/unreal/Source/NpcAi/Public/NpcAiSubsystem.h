// The npcai sidecar as a game-instance subsystem: it starts `npcai serve` beside the game (or
// attaches to a running one), pumps its replies once per frame on the game thread, and turns
// them into Blueprint events. Every request returns a handle (0 when it could not be made);
// its events carry the same handle.
#pragma once

#include "CoreMinimal.h"
#include "Subsystems/GameInstanceSubsystem.h"
#include "Tickable.h"

#include "NpcAiSubsystem.generated.h"

class FNpcAiBridge;

// How a request ended well: the sidecar's `done` (say/decide) or `ok` (other ops).
USTRUCT(BlueprintType)
struct NPCAI_API FNpcAiResult
{
	GENERATED_BODY()

	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	int32 Handle = 0;

	// say: the line; decide: the chosen string, or the object as JSON; the fallback when
	// bUsedFallback; empty for ops without a value.
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString Value;

	// The raw generated text (for say: every token chunk joined).
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString Text;

	// stop, length, deadline or error.
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString FinishReason;

	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	bool bTimedOut = false;

	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	bool bUsedFallback = false;

	// decide with choices: each option's probability.
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	TMap<FString, float> Probs;

	// The whole reply as JSON (timing, cached_tokens, save's state as base64, a chain's results, ...).
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString ReplyJson;

	// say or decide with actions: the action the NPC chose (empty when it just talks, or when the
	// answer is a fallback) and its arguments as a JSON object. OnActionRequested fired first.
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString ActionName;

	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString ActionArgsJson;
};

// A chain's finished step (the sidecar's `step` event).
USTRUCT(BlueprintType)
struct NPCAI_API FNpcAiStep
{
	GENERATED_BODY()

	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	int32 Handle = 0;

	// The step's index in the chain, and its `as` name.
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	int32 Step = 0;

	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString As;

	// The step's value: a string as it is, anything else as JSON.
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString Value;

	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	bool bUsedFallback = false;

	// The whole step event as JSON (probs, cached, action, ...).
	UPROPERTY(BlueprintReadOnly, Category = "NpcAi")
	FString StepJson;
};

DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(FNpcAiTokenEvent, int32, Handle, const FString&, Text);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FNpcAiDoneEvent, const FNpcAiResult&, Result);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_ThreeParams(FNpcAiErrorEvent, int32, Handle, const FString&, Code, const FString&, Message);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FNpcAiCancelledEvent, int32, Handle);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(FNpcAiSidecarEvent, bool, bReady, const FString&, Detail);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FNpcAiStepEvent, const FNpcAiStep&, Step);
// ArgsJson: the action's arguments as a JSON object (valid against the action's schema).
DECLARE_DYNAMIC_MULTICAST_DELEGATE_FourParams(FOnNpcActionRequested, int32, Handle, const FString&, Npc, const FString&, Name, const FString&, ArgsJson);

// Settings live in DefaultGame.ini under [/Script/NpcAi.NpcAiSubsystem].
UCLASS(Config = Game)
class NPCAI_API UNpcAiSubsystem : public UGameInstanceSubsystem, public FTickableGameObject
{
	GENERATED_BODY()

public:
	// Look for the shipped sidecar (npcai-sidecar from `npcai bundle`) before using SidecarProgram:
	// in <Project>/npcai/ (staged with the packaged game by NpcAi.Build.cs), then next to the game's
	// executable (and its npcai/ subfolder), then on PATH. Off: always run SidecarProgram.
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	bool bUseSidecarBundle = true;

	// The program to start when no bundle is found, taken whole: its path may hold spaces (C:\Program Files\...).
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	FString SidecarProgram = TEXT("npcai");

	// The program's own arguments, one per entry, before "serve ..." (e.g. "-m", "npcai" after a Python).
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	TArray<FString> SidecarProgramArgs;

	// Extra `npcai serve` flags, e.g. "--model" "gemma-3-270m".
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	TArray<FString> SidecarArgs;

	// When set (tcp://127.0.0.1:PORT), connect to this running sidecar instead of starting one.
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	FString AttachEndpoint;

	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	bool bStartOnInitialize = true;

	// Start a new sidecar this many seconds after the current one failed (0: never).
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	float RelaunchDelaySeconds = 5.f;

	// Per-frame pump bounds.
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	int32 MaxMessagesPerFrame = 64;

	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	int32 FrameBudgetMicroseconds = 1000;

	// Report each frame's time (Tick's DeltaTime) to the sidecar, which backs off (fewer
	// threads, smaller batches, pauses) while frames run over TargetFrameMs. TargetFrameMs > 0
	// is sent as the budget's frame_ms each time the sidecar becomes ready.
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings")
	bool bReportFrameTimes = false;

	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings", meta = (ClampMin = "0"))
	float TargetFrameMs = 16.7f;

	// One `frame` report per this many frames (1-64); takes effect at the next StartSidecar.
	UPROPERTY(Config, EditAnywhere, BlueprintReadWrite, Category = "NpcAi|Settings", meta = (ClampMin = "1", ClampMax = "64"))
	int32 FrameReportEvery = 6;

	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FNpcAiTokenEvent OnToken;

	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FNpcAiDoneEvent OnDone;

	// say: a sentence of the line is complete (for speech and subtitles; the sentences joined
	// are the line). In a chain, the sentences of its say steps.
	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FNpcAiTokenEvent OnSentence;

	// chain: a step finished.
	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FNpcAiStepEvent OnStep;

	// An NPC chose one of its declared actions: from a say or decide with actions (right before
	// OnDone) or a chain step (right after OnStep); never for a fallback. Carry it out, then call
	// ActResult.
	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FOnNpcActionRequested OnActionRequested;

	// Code: the sidecar's (bad_request, unknown_npc, overloaded, ...) or the bridge's own:
	// unavailable (made before the sidecar was ready, or it died or went silent).
	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FNpcAiErrorEvent OnError;

	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FNpcAiCancelledEvent OnCancelled;

	// Ready (Detail: the endpoint) or failed (Detail: why).
	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FNpcAiSidecarEvent OnSidecarStateChanged;

	// Starts (or attaches to) the sidecar with the settings above; stops a previous one first.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	void StartSidecar();

	// Shuts the sidecar down (waits at most 2 s); open requests end without events.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	void StopSidecar();

	UFUNCTION(BlueprintPure, Category = "NpcAi")
	bool IsReady() const;

	UFUNCTION(BlueprintPure, Category = "NpcAi")
	FString GetSidecarError() const;

	// Seed < 0: none.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 DefineNpc(const FString& Npc, const FString& Persona, int32 Seed = -1);

	// MaxTokens 0: the sidecar's default. DeadlineMs < 0: none. An empty Fallback: none.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 Say(const FString& Npc, const FString& Text, int32 MaxTokens = 0, int32 DeadlineMs = -1, const FString& Fallback = TEXT(""));

	// Npc may be empty. Result.Value is one of Choices; Result.Probs has them all.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 Decide(const FString& Npc, const FString& Situation, const TArray<FString>& Choices, int32 DeadlineMs = -1, const FString& Fallback = TEXT(""));

	// SchemaJson: a JSON schema; Result.Value is the object as JSON. FallbackJson: JSON, or empty.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 DecideSchema(const FString& Npc, const FString& Situation, const FString& SchemaJson, int32 DeadlineMs = -1, const FString& FallbackJson = TEXT(""));

	// An NPC with the actions it may take. ActionsJson: a JSON array of {"name", "description",
	// "args"} objects, "args" a JSON schema of the action's arguments (typically enums of item ids).
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 DefineNpcWithActions(const FString& Npc, const FString& Persona, const FString& ActionsJson, int32 Seed = -1);

	// A line after which the NPC may act: among ActionNames of its actions (empty: any of them).
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 SayAndAct(const FString& Npc, const FString& Text, const TArray<FString>& ActionNames, int32 MaxTokens = 0, int32 DeadlineMs = -1, const FString& Fallback = TEXT(""));

	// Which of its actions the NPC takes now (among ActionNames; empty: any), and with what
	// arguments: OnActionRequested, then OnDone (Value: {"name", "args"} as JSON; Probs per action).
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 DecideAction(const FString& Npc, const FString& Situation, const TArray<FString>& ActionNames, int32 DeadlineMs = -1, const FString& FallbackJson = TEXT(""));

	// What came of the NPC's action Name; its next line can refer to it.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 ActResult(const FString& Npc, const FString& Name, const FString& Result);

	// Several steps in one request. StepsJson: a JSON array of step objects (op, as, and that
	// op's fields; "{name}" in a string field is an earlier step's value). OnStep per step; OnDone's
	// ReplyJson holds "results". DeadlineMs covers the whole chain.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 Chain(const FString& StepsJson, int32 DeadlineMs = -1, const FString& FallbackJson = TEXT(""));

	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 Observe(const FString& Npc, const FString& Text);

	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 Forget(const FString& Npc);

	// The sidecar's compute budget. A negative argument leaves that limit as it is. Threads: most
	// compute threads (0: the sidecar's choice); TokensPerSecond: dialogue token cap (0: none);
	// Share: (0, 1], share of wall time it may compute; FrameMs: the target frame time (0: none).
	// OnDone's ReplyJson holds the whole budget and the effective limits.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	int32 SetBudget(int32 Threads = -1, float TokensPerSecond = -1.f, float Share = -1.f, float FrameMs = -1.f);

	// How far the sidecar has backed off (0-3) after the latest frame report; 0 before any.
	UFUNCTION(BlueprintPure, Category = "NpcAi")
	int32 GetBackoffLevel() const;

	// The request then ends with OnCancelled (or its own ending, if that was first).
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	bool Cancel(int32 Handle);

	// USubsystem
	virtual void Initialize(FSubsystemCollectionBase& Collection) override;
	virtual void Deinitialize() override;

	// FTickableGameObject: the per-frame pump.
	virtual void Tick(float DeltaTime) override;
	virtual TStatId GetStatId() const override;
	virtual ETickableTickType GetTickableTickType() const override;
	virtual bool IsTickable() const override;
	virtual bool IsTickableWhenPaused() const override { return true; }

private:
	TSharedPtr<FNpcAiBridge> Bridge;
	uint8 LastState = 0;
	double RelaunchAt = 0.0;
};
