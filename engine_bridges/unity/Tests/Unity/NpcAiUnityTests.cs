using System.Collections.Generic;
using NUnit.Framework;

namespace NpcAi.Tests
{
    /// <summary>
    /// The in-house cases under Unity's Test Runner (Edit Mode). Vector cases need the repository's
    /// engine_bridges/conformance/vectors.tsv (found from the project folder upwards, or NPCAI_VECTORS)
    /// and are ignored without it. The end-to-end cases share one sidecar and run in order, so they
    /// are explicit here; the mono runner (README) is their home.
    /// </summary>
    public sealed class NpcAiUnityTests
    {
        static IEnumerable<TestCaseData> UnitCases()
        {
            return Cases("unit");
        }

        static IEnumerable<TestCaseData> EndToEndCases()
        {
            return Cases("e2e");
        }

        [TestCaseSource("UnitCases")]
        public void Unit(TestCase test)
        {
            Run(test);
        }

        [Explicit("needs a Python with npcai (NPCAI_PYTHON) and runs its cases in order")]
        [TestCaseSource("EndToEndCases")]
        public void EndToEnd(TestCase test)
        {
            Run(test);
        }

        static IEnumerable<TestCaseData> Cases(string group)
        {
            foreach (var test in TestSuite.Group(group))
                yield return new TestCaseData(test).SetName(test.Name);
        }

        static void Run(TestCase test)
        {
            try
            {
                test.Run();
            }
            catch (SkipException e)
            {
                Assert.Ignore(e.Message);
            }
            catch (TestFailure e)
            {
                Assert.Fail(e.Message);
            }
        }
    }
}
