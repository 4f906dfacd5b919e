using System.Collections.Generic;

namespace NpcAi.Tests
{
    /// <summary>Every case, by group: "unit" (no sidecar), "suite" (msgpack-test-suite), "e2e" (a real sidecar), "bench" (per-frame cost).</summary>
    public static class TestSuite
    {
        public static IEnumerable<TestCase> All()
        {
            foreach (var c in CodecTests.Cases()) yield return c;
            foreach (var c in ZmtpTests.Cases()) yield return c;
            foreach (var c in ClientTests.Cases()) yield return c;
            foreach (var c in MsgPackSuiteTests.Cases()) yield return c;
            foreach (var c in EndToEndTests.Cases()) yield return c;
            foreach (var c in PollBenchmark.Cases()) yield return c;
        }

        public static IEnumerable<TestCase> Group(string group)
        {
            foreach (var c in All())
                if (group == "all" || c.Group == group)
                    yield return c;
        }
    }
}
