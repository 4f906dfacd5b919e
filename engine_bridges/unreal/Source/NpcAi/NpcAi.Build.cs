using System.IO;
using UnrealBuildTool;

public class NpcAi : ModuleRules
{
	public NpcAi(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;
		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "Engine" });
		PrivateDependencyModuleNames.AddRange(new string[] { "Json" });

		// The engine-agnostic core lives beside Source/ (it also builds alone with CMake);
		// Private/NpcAiCore.cpp compiles its sources into this module.
		string CoreDir = Path.Combine(PluginDirectory, "core");
		PrivateIncludePaths.Add(Path.Combine(CoreDir, "include"));
		PrivateIncludePaths.Add(Path.Combine(CoreDir, "src"));
		bEnableExceptions = false;  // the core uses none
	}
}
