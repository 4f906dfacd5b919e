using System;
using System.Collections.Generic;
using System.Diagnostics;

namespace NpcAi.Tests
{
    /// <summary>A test that cannot run here (a missing file or tool); reported, not failed.</summary>
    public sealed class SkipException : Exception
    {
        public SkipException(string reason) : base(reason) { }
    }

    public sealed class TestFailure : Exception
    {
        public TestFailure(string message) : base(message) { }
    }

    public sealed class TestCase
    {
        public TestCase(string group, string name, Action run)
        {
            Group = group;
            Name = name;
            Run = run;
        }

        public string Group { get; private set; }
        public string Name { get; private set; }
        public Action Run { get; private set; }

        public override string ToString()
        {
            return Name;
        }
    }

    /// <summary>The in-house runner: no NUnit download needed. Prints one PASS/FAIL/SKIP line per case.</summary>
    public static class TestRunner
    {
        public static int Run(IEnumerable<TestCase> cases)
        {
            int passed = 0, failed = 0, skipped = 0;
            foreach (var test in cases)
            {
                var clock = Stopwatch.StartNew();
                try
                {
                    test.Run();
                    passed++;
                    Console.WriteLine("PASS {0} ({1} ms)", test.Name, clock.ElapsedMilliseconds);
                }
                catch (SkipException e)
                {
                    skipped++;
                    Console.WriteLine("SKIP {0}: {1}", test.Name, e.Message);
                }
                catch (Exception e)
                {
                    failed++;
                    Console.WriteLine("FAIL {0} ({1} ms): {2}", test.Name, clock.ElapsedMilliseconds,
                        e is TestFailure ? e.Message : e.ToString());
                }
            }
            Console.WriteLine("{0} passed, {1} failed, {2} skipped", passed, failed, skipped);
            return failed == 0 ? 0 : 1;
        }
    }

    /// <summary>Assertions that say what they saw.</summary>
    public static class Check
    {
        public static void True(bool condition, string what)
        {
            if (!condition)
                throw new TestFailure(what);
        }

        public static void Equal<T>(T expected, T actual, string what)
        {
            if (!Equals(expected, actual))
                throw new TestFailure(string.Format("{0}: expected {1}, got {2}", what, Show(expected), Show(actual)));
        }

        public static void Bytes(byte[] expected, byte[] actual, string what)
        {
            if (Hex(expected) != Hex(actual))
                throw new TestFailure(string.Format("{0}: expected {1}, got {2}", what, Clip(Hex(expected)), Clip(Hex(actual))));
        }

        public static T Throws<T>(Action action, string what) where T : Exception
        {
            try
            {
                action();
            }
            catch (T e)
            {
                return e;
            }
            catch (Exception e)
            {
                throw new TestFailure(what + ": expected " + typeof(T).Name + ", got " + e.GetType().Name + ": " + e.Message);
            }
            throw new TestFailure(what + ": expected " + typeof(T).Name + ", nothing was thrown");
        }

        public static string Hex(byte[] bytes)
        {
            return bytes == null ? "null" : BitConverter.ToString(bytes).Replace("-", "").ToLowerInvariant();
        }

        static string Clip(string s)
        {
            return s.Length > 120 ? s.Substring(0, 120) + "..." : s;
        }

        static string Show(object value)
        {
            return value == null ? "null" : value is string ? "\"" + value + "\"" : value.ToString();
        }
    }
}
