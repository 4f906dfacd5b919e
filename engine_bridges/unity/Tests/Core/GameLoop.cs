using System;
using System.Diagnostics;
using System.Threading;

namespace NpcAi.Tests
{
    /// <summary>Drives a client the way a game does: Poll() once per "frame", with a short sleep between.</summary>
    public static class GameLoop
    {
        public static void Until(NpcAiClient client, Func<bool> condition, int timeoutMs, string what)
        {
            var clock = Stopwatch.StartNew();
            while (!condition())
            {
                if (clock.ElapsedMilliseconds > timeoutMs)
                    throw new TestFailure("timed out after " + timeoutMs + " ms waiting for " + what
                                          + " (client " + client.State + (client.LastError != null ? ": " + client.LastError : "") + ")");
                client.Poll();
                Thread.Sleep(1);
            }
        }

        public static void Run(NpcAiClient client, int milliseconds)
        {
            var clock = Stopwatch.StartNew();
            while (clock.ElapsedMilliseconds < milliseconds)
            {
                client.Poll();
                Thread.Sleep(1);
            }
        }
    }
}
