using System;

namespace NpcAi.Tests
{
    /// <summary>
    /// mono NpcAi.Tests.exe [unit|e2e|bench|all] — exit code 0 when every case passed.
    /// Environment: NPCAI_VECTORS (path to vectors.tsv), NPCAI_PYTHON (interpreter for the sidecar).
    /// </summary>
    public static class Program
    {
        public static int Main(string[] args)
        {
            string group = args.Length > 0 ? args[0] : "all";
            return TestRunner.Run(TestSuite.Group(group));
        }
    }
}
