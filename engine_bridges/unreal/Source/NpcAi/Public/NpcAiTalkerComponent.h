// Example: an NPC that talks, built only on UNpcAiSubsystem's public API. Add it to an actor,
// set NpcName and Persona, call Talk from Blueprint and bind OnLine (a speech bubble, say).
#pragma once

#include "Components/ActorComponent.h"
#include "CoreMinimal.h"
#include "NpcAiSubsystem.h"

#include "NpcAiTalkerComponent.generated.h"

DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(FNpcAiLineEvent, const FString&, Line, bool, bFinished);

UCLASS(ClassGroup = (AI), meta = (BlueprintSpawnableComponent))
class NPCAI_API UNpcAiTalkerComponent : public UActorComponent
{
	GENERATED_BODY()

public:
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "NpcAi")
	FString NpcName = TEXT("brom");

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "NpcAi", meta = (MultiLine = true))
	FString Persona = TEXT("You are Brom, a gruff blacksmith in a mountain village.");

	// The line must be complete this long after Talk; otherwise FallbackLine is shown.
	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "NpcAi")
	int32 DeadlineMs = 3000;

	UPROPERTY(EditAnywhere, BlueprintReadWrite, Category = "NpcAi")
	FString FallbackLine = TEXT("Hm.");

	// The line so far (grows as tokens stream in), then the whole line.
	UPROPERTY(BlueprintAssignable, Category = "NpcAi")
	FNpcAiLineEvent OnLine;

	// Starts the NPC's answer to what the player said; a previous answer still streaming is cancelled.
	UFUNCTION(BlueprintCallable, Category = "NpcAi")
	void Talk(const FString& PlayerLine);

protected:
	virtual void BeginPlay() override;
	virtual void EndPlay(const EEndPlayReason::Type Reason) override;

private:
	UFUNCTION()
	void HandleSidecar(bool bReady, const FString& Detail);
	UFUNCTION()
	void HandleToken(int32 Handle, const FString& Text);
	UFUNCTION()
	void HandleDone(const FNpcAiResult& Result);
	UFUNCTION()
	void HandleError(int32 Handle, const FString& Code, const FString& Message);

	UNpcAiSubsystem* Sidecar() const;

	int32 Speaking = 0;  // handle of the answer being streamed
	FString Line;
};
