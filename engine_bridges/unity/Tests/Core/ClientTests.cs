using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Threading;
using System.Threading.Tasks;

namespace NpcAi.Tests
{
    /// <summary>The client's dispatch, cancel, deadline and failure logic against a scripted peer (no Python).</summary>
    public static class ClientTests
    {
        public static IEnumerable<TestCase> Cases()
        {
            yield return new TestCase("unit", "client.unconnected_requests_end_on_poll", UnconnectedRequestsEndOnPoll);
            yield return new TestCase("unit", "client.scripted_replies", ScriptedReplies);
            yield return new TestCase("unit", "client.poll_is_bounded", PollIsBounded);
            yield return new TestCase("unit", "client.cancel", CancelFlow);
            yield return new TestCase("unit", "client.silent_sidecar_deadlines", SilentSidecarDeadlines);
            yield return new TestCase("unit", "client.connect_refused", ConnectRefused);
            yield return new TestCase("unit", "client.hello_refused", HelloRefused);
            yield return new TestCase("unit", "launcher.join_arguments", JoinArguments);
        }

        static void UnconnectedRequestsEndOnPoll()
        {
            var client = new NpcAiClient();
            var plain = client.Say("brom", "Hi");
            var withFallback = client.Say("brom", "Hi", new SayOptions { Fallback = "..." });
            Check.True(plain.IsPending && withFallback.IsPending, "nothing happens before Poll()");
            client.Poll();
            Check.Equal(RequestStatus.Error, plain.Status, "without a fallback: error");
            Check.Equal("disconnected", plain.ErrorCode, "error code");
            Check.Equal(RequestStatus.Done, withFallback.Status, "with a fallback: done");
            Check.True(withFallback.UsedFallback && (string)withFallback.Value == "...", "the fallback is the value");
        }

        // Standard answers: hello ok, say streams "Hel" + "lo", decide picks flee.
        static IEnumerable<Dictionary<string, object>> Answer(Dictionary<string, object> request)
        {
            object id = request["id"];
            switch ((string)request["op"])
            {
                case "hello":
                    return new[] { FakeSidecar.Reply(id, "ok", "protocol", 1L, "pid", 4242L) };
                case "say":
                    return new[]
                    {
                        FakeSidecar.Reply(id, "token", "text", "Hel"),
                        FakeSidecar.Reply(id, "token", "text", "lo"),
                        FakeSidecar.Reply(id, "done", "text", "Hello", "value", "Hello", "tokens", 2L,
                            "finish_reason", "stop", "timed_out", false, "used_fallback", false),
                    };
                case "decide":
                    return new[]
                    {
                        FakeSidecar.Reply(id, "done", "value", "flee", "text", "flee",
                            "probs", new Dictionary<string, object> { { "attack", 0.25 }, { "flee", 0.75 } }),
                    };
                default:
                    return new[] { FakeSidecar.Reply(id, "ok") };
            }
        }

        static void ScriptedReplies()
        {
            using (var fake = new FakeSidecar(Answer))
            {
                var client = new NpcAiClient();
                int connected = 0;
                var warnings = new List<string>();
                client.Connected += c => connected++;
                client.Warning += (c, message) => warnings.Add(message);
                client.Connect(fake.Endpoint);
                var say = client.Say("brom", "Hi", new SayOptions { MaxTokens = 8 });  // queued behind hello
                var chunks = new List<string>();
                say.Token += (r, chunk) => chunks.Add(chunk);
                GameLoop.Until(client, () => !say.IsPending, 3000, "say");
                Check.Equal(1, connected, "Connected fired once");
                Check.Equal(ClientState.Ready, client.State, "state");
                Check.Equal<object>(4242L, client.ServerInfo["pid"], "hello payload");
                Check.Equal(RequestStatus.Done, say.Status, "say status");
                Check.Equal("Hello", string.Join("", chunks.ToArray()), "token chunks");
                Check.Equal("Hello", say.Text, "done text");
                Check.Equal("Hello", say.StreamedText, "streamed text");

                var decide = client.DecideAsync("A sword!", new[] { "attack", "flee" });
                GameLoop.Until(client, () => decide.IsCompleted, 3000, "decide task");
                Check.Equal<object>("flee", decide.Result.Value, "decision");
                Check.Equal(0.75, decide.Result.Probs["flee"], "probs");

                fake.Push(FakeSidecar.Reply(null, "error", "code", "bad_request", "message", "frame is not msgpack"));
                fake.Push(FakeSidecar.Reply(999L, "done", "value", "late"));
                GameLoop.Until(client, () => warnings.Count > 0, 3000, "a warning");
                GameLoop.Run(client, 20);
                Check.Equal(1, warnings.Count, "one warning (the nil-id error; the late reply is ignored)");
                Check.True(warnings[0].Contains("bad_request"), "the warning names the error: " + warnings[0]);
                client.Dispose();
            }
        }

        static void PollIsBounded()
        {
            using (var fake = new FakeSidecar(Answer))
            {
                var client = new NpcAiClient(new NpcAiClientOptions { MaxMessagesPerPoll = 3 });
                client.Connect(fake.Endpoint);
                GameLoop.Until(client, () => client.State == ClientState.Ready, 3000, "ready");
                var pings = new List<NpcRequest>();
                for (int i = 0; i < 10; i++)
                    pings.Add(client.Ping());
                client.Poll();  // sends nothing new (already flushed) and may take replies that arrived
                var clock = Stopwatch.StartNew();
                while (fake.Received.Count < 11 && clock.ElapsedMilliseconds < 3000)
                    Thread.Sleep(1);
                Thread.Sleep(50);  // let the replies reach our socket buffer
                int before = client.PendingCount;
                int handled = client.Poll();
                Check.True(handled <= 3, "at most MaxMessagesPerPoll per Poll(), got " + handled);
                Check.Equal(before - handled, client.PendingCount, "each handled reply ended a ping");
                GameLoop.Until(client, () => client.PendingCount == 0, 3000, "all pings");
                client.Dispose();

                // A zero budget still makes progress: one reply per Poll().
                var tight = new NpcAiClient(new NpcAiClientOptions { PollBudgetMicros = 0 });
                using (var fake2 = new FakeSidecar(Answer))
                {
                    tight.Connect(fake2.Endpoint);
                    GameLoop.Until(tight, () => tight.State == ClientState.Ready, 3000, "ready");
                    for (int i = 0; i < 5; i++)
                        tight.Ping();
                    clock.Restart();
                    while (fake2.Received.Count < 6 && clock.ElapsedMilliseconds < 3000)
                        Thread.Sleep(1);
                    Thread.Sleep(50);
                    Check.Equal(1, tight.Poll(), "replies handled with a zero budget");
                    tight.Dispose();
                }
            }
        }

        static void CancelFlow()
        {
            // say streams one token and then waits; cancel answers found=true and ends the target,
            // except for targets named "ghost", which the fake pretends not to know.
            var names = new Dictionary<long, string>();
            Func<Dictionary<string, object>, IEnumerable<Dictionary<string, object>>> respond = request =>
            {
                object id = request["id"];
                switch ((string)request["op"])
                {
                    case "say":
                        lock (names)
                            names[(long)id] = (string)request["npc"];
                        return new[] { FakeSidecar.Reply(id, "token", "text", "Once") };
                    case "cancel":
                        long target = (long)request["target"];
                        string npc;
                        lock (names)
                            names.TryGetValue(target, out npc);
                        if (npc == "ghost")
                            return new[] { FakeSidecar.Reply(id, "ok", "target", target, "found", false) };
                        return new[]
                        {
                            FakeSidecar.Reply(id, "ok", "target", target, "found", true),
                            FakeSidecar.Reply(target, "cancelled"),
                        };
                    default:
                        return new[] { FakeSidecar.Reply(id, "ok") };
                }
            };
            using (var fake = new FakeSidecar(respond))
            {
                var client = new NpcAiClient();
                client.Connect(fake.Endpoint);
                var story = client.Say("brom", "Tell me a story");
                story.Token += (r, chunk) => client.Cancel(r);
                int cancelled = 0;
                story.Cancelled += r => cancelled++;
                GameLoop.Until(client, () => !story.IsPending, 3000, "cancelled story");
                Check.Equal(RequestStatus.Cancelled, story.Status, "status");
                Check.Equal(1, cancelled, "Cancelled fired once");
                Check.True(!client.Cancel(story), "cancelling an ended request returns false");

                var ghost = client.Say("ghost", "Boo");
                GameLoop.Until(client, () => ghost.StreamedText.Length > 0, 3000, "ghost token");
                client.Cancel(ghost);
                GameLoop.Until(client, () => !ghost.IsPending, 3000, "ghost ends locally");
                Check.Equal(RequestStatus.Cancelled, ghost.Status, "found=false ends the target as cancelled");

                var source = new CancellationTokenSource();
                var task = client.SayAsync("brom", "Another", null, source.Token);
                GameLoop.Run(client, 20);
                ThreadPool.QueueUserWorkItem(_ => source.Cancel());  // tokens may fire on any thread
                GameLoop.Until(client, () => task.IsCompleted, 3000, "async say cancelled");
                Check.True(task.IsCanceled, "the task is cancelled, status " + task.Status);
                var sent = fake.Received;
                Check.Equal("cancel", (string)sent[sent.Count - 1]["op"], "a cancel op was sent");
                Check.True(client.SayAsync("brom", "x", null, source.Token).IsCanceled, "an already-cancelled token sends nothing");
                client.Dispose();
            }
        }

        static void SilentSidecarDeadlines()
        {
            using (var fake = new FakeSidecar(request => null))
            {
                var client = new NpcAiClient(new NpcAiClientOptions { ConnectTimeoutMs = 30000 });
                string lostReason = null;
                client.Disconnected += (c, reason) => lostReason = reason;
                client.Connect(fake.Endpoint);
                var clock = Stopwatch.StartNew();
                var say = client.Say("brom", "Hi", new SayOptions { DeadlineMs = 200, Fallback = "..." });
                var decide = client.Decide("Danger", new[] { "run", "hide" }, new DecideOptions { DeadlineMs = 300 });
                long sayEnded = 0, decideEnded = 0;
                say.Done += r => sayEnded = clock.ElapsedMilliseconds;
                decide.Done += r => decideEnded = clock.ElapsedMilliseconds;
                GameLoop.Until(client, () => !say.IsPending && !decide.IsPending, 3000, "deadlines");
                Check.True(say.TimedOut && say.UsedFallback && (string)say.Value == "...", "say: timed out with its fallback");
                Check.Equal("deadline", say.FinishReason, "finish_reason");
                Check.True(decide.TimedOut && decide.UsedFallback && decide.Value == null, "decide: timed out, nil fallback");
                Check.True(sayEnded >= 200 && sayEnded < 300, "say ended at its deadline: " + sayEnded + " ms");
                Check.True(decideEnded >= 300 && decideEnded < 400, "decide ended at its deadline: " + decideEnded + " ms");

                var noFallback = client.Say("brom", "Still there?");
                var withFallback = client.Say("brom", "Hello?", new SayOptions { Fallback = "*silence*" });
                GameLoop.Run(client, 20);
                fake.HangUp();
                GameLoop.Until(client, () => client.State == ClientState.Disconnected, 3000, "disconnect");
                Check.True(lostReason != null, "Disconnected fired");
                Check.Equal(RequestStatus.Error, noFallback.Status, "open request without fallback");
                Check.Equal("disconnected", noFallback.ErrorCode, "its code");
                Check.True(withFallback.UsedFallback && (string)withFallback.Value == "*silence*", "open request with fallback");
                Check.Equal("disconnected", withFallback.FinishReason, "its finish_reason");
                client.Dispose();
            }
        }

        static void ConnectRefused()
        {
            var client = new NpcAiClient();
            string reason = null;
            client.Disconnected += (c, r) => reason = r;
            client.Connect("tcp://127.0.0.1:" + ZmtpTests.FreePort());
            var say = client.Say("brom", "Hi", new SayOptions { Fallback = "..." });
            GameLoop.Until(client, () => reason != null, 3000, "refused");
            Check.True(reason.Contains("cannot connect"), "reason: " + reason);
            Check.True(say.UsedFallback, "the open request used its fallback");
        }

        static void HelloRefused()
        {
            using (var fake = new FakeSidecar(request => new[]
                   {
                       FakeSidecar.Reply(request["id"], "error", "code", "unauthorized", "message", "hello needs the sidecar's token"),
                   }))
            {
                var client = new NpcAiClient();
                string reason = null;
                client.Disconnected += (c, r) => reason = r;
                client.Connect(fake.Endpoint);
                GameLoop.Until(client, () => reason != null, 3000, "refusal");
                Check.True(reason.Contains("unauthorized"), "reason: " + reason);
                Check.Equal(ClientState.Disconnected, client.State, "state");
                client.Dispose();
            }
        }

        static void JoinArguments()
        {
            Check.Equal("-m npcai serve", SidecarLauncher.JoinArguments(new[] { "-m", "npcai", "serve" }), "plain");
            Check.Equal("\"a b\" \"\"", SidecarLauncher.JoinArguments(new[] { "a b", "" }), "spaces and empty");
            Check.Equal("\"say \\\"hi\\\"\"", SidecarLauncher.JoinArguments(new[] { "say \"hi\"" }), "quotes");
            Check.Equal("\"C:\\My Dir\\\\\"", SidecarLauncher.JoinArguments(new[] { "C:\\My Dir\\" }), "trailing backslash");
        }
    }
}
