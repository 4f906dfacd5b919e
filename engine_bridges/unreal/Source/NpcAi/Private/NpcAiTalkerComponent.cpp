#include "NpcAiTalkerComponent.h"

#include "Engine/GameInstance.h"
#include "Engine/World.h"
#include "NpcAiSubsystem.h"

UNpcAiSubsystem* UNpcAiTalkerComponent::Sidecar() const
{
	const UGameInstance* GameInstance = GetWorld() ? GetWorld()->GetGameInstance() : nullptr;
	return GameInstance ? GameInstance->GetSubsystem<UNpcAiSubsystem>() : nullptr;
}

void UNpcAiTalkerComponent::BeginPlay()
{
	Super::BeginPlay();
	if (UNpcAiSubsystem* Npcai = Sidecar())
	{
		Npcai->OnSidecarStateChanged.AddDynamic(this, &UNpcAiTalkerComponent::HandleSidecar);
		Npcai->OnToken.AddDynamic(this, &UNpcAiTalkerComponent::HandleToken);
		Npcai->OnDone.AddDynamic(this, &UNpcAiTalkerComponent::HandleDone);
		Npcai->OnError.AddDynamic(this, &UNpcAiTalkerComponent::HandleError);
		if (Npcai->IsReady())
		{
			Npcai->DefineNpc(NpcName, Persona);
		}
	}
}

void UNpcAiTalkerComponent::EndPlay(const EEndPlayReason::Type Reason)
{
	if (UNpcAiSubsystem* Npcai = Sidecar())
	{
		Npcai->Cancel(Speaking);
		Npcai->OnSidecarStateChanged.RemoveAll(this);
		Npcai->OnToken.RemoveAll(this);
		Npcai->OnDone.RemoveAll(this);
		Npcai->OnError.RemoveAll(this);
	}
	Super::EndPlay(Reason);
}

void UNpcAiTalkerComponent::Talk(const FString& PlayerLine)
{
	UNpcAiSubsystem* Npcai = Sidecar();
	if (!Npcai)
	{
		return;
	}
	Npcai->Cancel(Speaking);
	Line.Reset();
	Speaking = Npcai->Say(NpcName, PlayerLine, 48, DeadlineMs, FallbackLine);
}

void UNpcAiTalkerComponent::HandleSidecar(bool bReady, const FString& Detail)
{
	if (bReady)  // also after a relaunch: the new sidecar knows no NPCs yet
	{
		Sidecar()->DefineNpc(NpcName, Persona);
	}
}

void UNpcAiTalkerComponent::HandleToken(int32 Handle, const FString& Text)
{
	if (Handle == Speaking)
	{
		Line += Text;
		OnLine.Broadcast(Line, false);
	}
}

void UNpcAiTalkerComponent::HandleDone(const FNpcAiResult& Result)
{
	if (Result.Handle == Speaking)
	{
		Speaking = 0;
		OnLine.Broadcast(Result.Value, true);  // the fallback when it timed out
	}
}

void UNpcAiTalkerComponent::HandleError(int32 Handle, const FString& Code, const FString& Message)
{
	if (Handle == Speaking)
	{
		Speaking = 0;
		OnLine.Broadcast(FallbackLine, true);
	}
}
