using System.IO;
using UnrealBuildTool;

public class NpcAi : ModuleRules
{
	public NpcAi(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;
		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "Engine" });
		PrivateDependencyModuleNames.AddRange(new string[] { "Json" });

		// The engine-agnostic core is part of this module: its headers are in Public/npcai/, its
		// sources in Private/npcai/ (the same files core/CMakeLists.txt builds and tests alone).
		// NPCAI_UNREAL makes its Windows includes go through UE's Allow/HideWindowsPlatformTypes.
		PrivateDefinitions.Add("NPCAI_UNREAL=1");
		bEnableExceptions = false;  // the core uses none
		// The core's .cpp files each keep helpers in anonymous namespaces; compile them one by one.
		bUseUnity = false;
		if (Target.Platform == UnrealTargetPlatform.Win64)
		{
			PublicSystemLibraries.Add("ws2_32.lib");
		}

		// The self-contained sidecar (`npcai bundle --out <Project>/npcai`), when present, is
		// staged with the packaged game as loose files at the same place, <Project>/npcai/, where
		// UNpcAiSubsystem looks for it before PATH (README, "Shipping the sidecar"). Without the
		// folder nothing is staged and the launcher uses the Command setting.
		if (Target.ProjectFile != null
			&& Directory.Exists(Path.Combine(Target.ProjectFile.Directory.FullName, "npcai")))
		{
			RuntimeDependencies.Add("$(ProjectDir)/npcai/...", StagedFileType.NonUFS);
		}
	}
}
