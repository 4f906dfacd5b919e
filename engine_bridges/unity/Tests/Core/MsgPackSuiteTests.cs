using System;
using System.Collections.Generic;
using System.IO;

namespace NpcAi.Tests
{
    /// <summary>
    /// The public vectors of the npm package msgpack-test-suite, converted by tests/msgpack_suite.py
    /// into "name TAB form TAB canonical encoding of its value, or refuse" and named by
    /// NPCAI_MSGPACK_SUITE (tests/test_bridge_unity.py sets it). Each form must decode to its value
    /// (checked by encoding the decoded value again, byte for byte); ext forms must be refused.
    /// </summary>
    public static class MsgPackSuiteTests
    {
        public static IEnumerable<TestCase> Cases()
        {
            yield return new TestCase("suite", "suite.msgpack_test_suite", Run);
        }

        static void Run()
        {
            string file = Environment.GetEnvironmentVariable("NPCAI_MSGPACK_SUITE");
            if (string.IsNullOrEmpty(file))
                throw new SkipException("NPCAI_MSGPACK_SUITE is not set");
            int forms = 0, failed = 0;
            foreach (string line in File.ReadAllLines(file))
            {
                if (line.Length == 0 || line[0] == '#')
                    continue;
                string[] columns = line.Split('\t');
                string name = columns[0], want = columns[2];
                byte[] form = Vectors.FromHex(columns[1]);
                string why = null;
                object value = null;
                bool refused = false;
                try
                {
                    value = MsgPack.Decode(form);
                }
                catch (MsgPackException e)
                {
                    refused = true;
                    why = "refused: " + e.Message;
                }
                if (want == "refuse")
                    why = refused ? null : "decoded an ext form instead of refusing it";
                else if (!refused)
                {
                    string got = Check.Hex(MsgPack.Encode(value)).Replace(" ", "").ToLowerInvariant();
                    if (got != want)
                        why = "decoded to a value that encodes as " + got + ", expected " + want;
                }
                forms++;
                if (why == null)
                    Console.WriteLine("ok suite " + name);
                else
                {
                    failed++;
                    Console.WriteLine("FAIL suite " + name + ": " + why);
                }
            }
            Check.True(forms > 0, "forms read from " + file);
            Check.Equal(0, failed, "forms that failed, of " + forms);
        }
    }
}
