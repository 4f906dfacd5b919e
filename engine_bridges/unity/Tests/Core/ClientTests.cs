using System;
using System.IO;
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
            yield return new TestCase("unit", "client.actions_sentences_steps", ActionsSentencesSteps);
            yield return new TestCase("unit", "client.unreadable_reply_ends_its_request", UnreadableReplyEndsItsRequest);
            yield return new TestCase("unit", "client.poll_is_bounded", PollIsBounded);
            yield return new TestCase("unit", "client.cancel", CancelFlow);
            yield return new TestCase("unit", "client.silent_sidecar_deadlines", SilentSidecarDeadlines);
            yield return new TestCase("unit", "client.connect_refused", ConnectRefused);
            yield return new TestCase("unit", "client.hello_refused", HelloRefused);
            yield return new TestCase("unit", "client.budget_encoding", BudgetEncoding);
            yield return new TestCase("unit", "client.frame_reports", FrameReports);
            yield return new TestCase("unit", "client.report_frame_allocates_nothing", ReportFrameAllocatesNothing);
            yield return new TestCase("unit", "launcher.join_arguments", JoinArguments);
            yield return new TestCase("unit", "launcher.find_bundle_order", FindBundleOrder);
        }

        static void UnconnectedRequestsEndOnPoll()
        {
            var client = new NpcAiClient();
            var plain = client.Say("brom", "Hi");
            var withFallback = client.Say("brom", "Hi", new SayOptions { Fallback = "..." });
            Check.True(plain.IsPending && withFallback.IsPending, "nothing happens before Poll()");
            client.Poll();
            Check.Equal(RequestStatus.Error, plain.Status, "without a fallback: error");
            Check.Equal("unavailable", plain.ErrorCode, "error code");
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
                case "frame":
                    return new[] { FakeSidecar.Reply(id, "ok", "backoff_level", 2L) };
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

        // A reply that does not decode (a str that is not UTF-8, a map with an int key) still ends the request its
        // leading id names, with bad_reply; what comes later for it is ignored; one with no readable id is a warning.
        static void UnreadableReplyEndsItsRequest()
        {
            using (var fake = new FakeSidecar(request => (string)request["op"] == "hello" ? Answer(request) : null))
            {
                var client = new NpcAiClient();
                var warnings = new List<string>();
                client.Warning += (c, message) => warnings.Add(message);
                client.Connect(fake.Endpoint);
                GameLoop.Until(client, () => client.State == ClientState.Ready, 3000, "ready");
                var badText = client.Say("brom", "1");
                var intKey = client.Say("brom", "2");
                GameLoop.Until(client, () => fake.Received.Count == 3, 3000, "the says");
                // {v: 1, id, event: "done", text: <ff fe>}
                var head = new byte[] { 0x84, 0xa1, (byte)'v', 0x01, 0xa2, (byte)'i', (byte)'d', (byte)badText.Id,
                    0xa5, (byte)'e', (byte)'v', (byte)'e', (byte)'n', (byte)'t', 0xa4, (byte)'d', (byte)'o', (byte)'n', (byte)'e',
                    0xa4, (byte)'t', (byte)'e', (byte)'x', (byte)'t', 0xa2, 0xff, 0xfe };
                fake.PushBytes(head);
                fake.Push(FakeSidecar.Reply(badText.Id, "done", "value", "late"));
                var reply = new Dictionary<string, object> { { "v", 1L }, { "id", intKey.Id }, { "event", "done" },
                    { "value", new Dictionary<object, object> { { 1L, 2L } } } };
                fake.PushBytes(MsgPack.Encode(reply));
                fake.PushBytes(new byte[] { 0xc1 });
                GameLoop.Until(client, () => !badText.IsPending && !intKey.IsPending && warnings.Count > 0, 3000, "endings");
                GameLoop.Run(client, 20);
                Check.Equal(RequestStatus.Error, badText.Status, "not UTF-8: status");
                Check.Equal("bad_reply", badText.ErrorCode, "not UTF-8: code");
                Check.Equal(RequestStatus.Error, intKey.Status, "int key: status");
                Check.Equal("bad_reply", intKey.ErrorCode, "int key: code");
                Check.Equal(1, warnings.Count, "one warning (the reply with no id; the late done is ignored)");
                Check.Equal(ClientState.Ready, client.State, "still connected");
                client.Dispose();
            }
        }

        // A say with actions, a decide with actions (one real, one a fallback), a schema decide whose value looks like
        // an action, and a chain whose steps act: ActionRequested fires for the NPCs' own choices only.
        static IEnumerable<Dictionary<string, object>> ActingAnswer(Dictionary<string, object> request)
        {
            object id = request["id"];
            var shield = new Dictionary<string, object> { { "name", "give" }, { "args", new Dictionary<string, object> { { "item", "shield" } } } };
            switch ((string)request["op"])
            {
                case "say":
                    return new[]
                    {
                        FakeSidecar.Reply(id, "token", "text", "Aye."),
                        FakeSidecar.Reply(id, "sentence", "text", "Aye."),
                        FakeSidecar.Reply(id, "token", "text", " Here."),
                        FakeSidecar.Reply(id, "sentence", "text", " Here."),
                        FakeSidecar.Reply(id, "done", "text", "Aye. Here.", "value", "Aye. Here.", "action", shield,
                            "used_fallback", false),
                    };
                case "decide":
                    bool fallback = "fall back".Equals(request["situation"]);
                    return new[] { FakeSidecar.Reply(id, "done", "value", shield, "used_fallback", fallback,
                        "probs", new Dictionary<string, object> { { "give", 1.0 } }) };
                case "chain":
                    var results = new Dictionary<string, object> { { "act", shield }, { "line", "Go." } };
                    return new[]
                    {
                        FakeSidecar.Reply(id, "step", "step", 0L, "as", "act", "value", shield, "used_fallback", false),
                        FakeSidecar.Reply(id, "token", "text", "Go.", "step", 1L),
                        FakeSidecar.Reply(id, "sentence", "text", "Go.", "step", 1L),
                        FakeSidecar.Reply(id, "step", "step", 1L, "as", "line", "value", "Go.", "action", null),
                        FakeSidecar.Reply(id, "done", "value", results, "results", results,
                            "probs", new Dictionary<string, object> { { "act", new Dictionary<string, object> { { "give", 1.0 } } } }),
                    };
                default:
                    return Answer(request);
            }
        }

        static void ActionsSentencesSteps()
        {
            using (var fake = new FakeSidecar(ActingAnswer))
            {
                var client = new NpcAiClient();
                var acts = new List<string>();
                client.ActionRequested += (r, npc, name, args) => acts.Add(npc + ":" + name + ":" + args["item"]);
                client.Connect(fake.Endpoint);
                var say = client.Say("brom", "A shield!", new SayOptions { Actions = new[] { "give" } });
                var heard = new List<string>();
                say.Sentence += (r, sentence) => heard.Add(sentence);
                say.Done += r => heard.Add(acts.Count == 1 ? "<done after the action>" : "<done>");
                GameLoop.Until(client, () => !say.IsPending, 3000, "say");
                Check.Equal("Aye.| Here.|<done after the action>", string.Join("|", heard.ToArray()), "sentences, action, done");
                Check.Equal(string.Join("", say.Sentences), say.Text, "the sentences joined are the line");
                Check.Equal("give", say.Action.Name, "request.Action");
                Check.Equal("brom:give:shield", string.Join(",", acts.ToArray()), "ActionRequested(npc, name, args)");

                acts.Clear();
                var pick = client.DecideAction("grik", "20 gold.");
                var fell = client.DecideAction("grik", "fall back", null, new DecideOptions { Fallback = null });
                var plain = client.DecideSchema("Which?", new Dictionary<string, object> { { "type", "object" } });
                GameLoop.Until(client, () => !pick.IsPending && !fell.IsPending && !plain.IsPending, 3000, "decides");
                Check.Equal("grik:give:shield", string.Join(",", acts.ToArray()), "only the real action decision acts");
                Check.True(pick.Action != null && fell.Action == null && plain.Action == null, "request.Action");
                Check.Equal(1.0, pick.Probs["give"], "probs per action");

                acts.Clear();
                var steps = new object[]
                {
                    new Dictionary<string, object> { { "op", "decide" }, { "as", "act" }, { "npc", "grik" },
                        { "situation", "x" }, { "actions", true } },
                    new Dictionary<string, object> { { "op", "say" }, { "as", "line" }, { "npc", "brom" },
                        { "text", "({act})" }, { "actions", new[] { "give" } } },
                };
                var chain = client.Chain(steps);
                var seen = new List<string>();
                chain.Step += (r, step) => seen.Add((string)step["as"]);
                GameLoop.Until(client, () => !chain.IsPending, 3000, "chain");
                Check.Equal(RequestStatus.Done, chain.Status, "chain status (" + chain.ErrorMessage + ")");
                Check.Equal("act,line", string.Join(",", seen.ToArray()), "step events in order");
                Check.Equal("grik:give:shield", string.Join(",", acts.ToArray()), "the acting step's npc acts");
                Check.Equal<object>("Go.", chain.Results["line"], "Results");
                Check.Equal("Go.", chain.StreamedText, "the say step's tokens");
                Check.True(chain.Probs == null && chain.Fields["probs"] is IDictionary<string, object>,
                    "a chain's probs (per step) are a field, not a choice's probs");
                var sent = fake.Received;
                Check.True(sent.Exists(m => "chain".Equals(m["op"]) && ((object[])m["steps"]).Length == 2), "chain sent");
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
                Check.Equal("unavailable", noFallback.ErrorCode, "its code");
                Check.True(withFallback.UsedFallback && (string)withFallback.Value == "*silence*", "open request with fallback");
                Check.Equal("unavailable", withFallback.FinishReason, "its finish_reason");
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

        // Expected bytes below come from Python's msgpack.packb, not from this bridge.
        static void BudgetEncoding()
        {
            var encoder = new RequestEncoder();
            Check.Bytes(Vectors.FromHex("84a17601a2696402a26f70a6627564676574a77468726561647301"),
                encoder.Budget(2, 1, null, null, null).ToArray(), "budget threads=1: only the field given");
            Check.Bytes(Vectors.FromHex("85a17601a2696403a26f70a6627564676574a57368617265cb3fe0000000000000"
                                        + "a86672616d655f6d73cb4030b33333333333"),
                encoder.Budget(3, null, null, 0.5, 16.7).ToArray(), "budget share=0.5 frame_ms=16.7");
            Check.Bytes(Vectors.FromHex("84a17601a2696407a26f70a56672616d65a86672616d655f6d7393cb4030b33333333333"
                                        + "cb4044000000000000cb4040a00000000000"),
                encoder.Frame(7, new[] { 16.7, 40.0, 33.25, 99.0 }, 3).ToArray(), "frame: an array of float64");

            var client = new NpcAiClient();
            Check.Throws<ArgumentOutOfRangeException>(() => client.SetBudget(share: 0), "share 0");
            Check.Throws<ArgumentOutOfRangeException>(() => client.SetBudget(share: 0.005), "share 0.005");
            Check.Throws<ArgumentOutOfRangeException>(() => client.SetBudget(share: 1.5), "share 1.5");
            Check.Throws<ArgumentOutOfRangeException>(() => client.SetBudget(threads: -1), "threads -1");
            Check.Throws<ArgumentOutOfRangeException>(() => client.SetBudget(frameMs: double.NaN), "frame_ms NaN");
            Check.Equal("budget", client.SetBudget(share: 1).Op, "a budget request");
        }

        static void FrameReports()
        {
            using (var fake = new FakeSidecar(Answer))
            {
                var client = new NpcAiClient();
                client.ReportFrame(50);  // before the connection is up: dropped, not sent later
                client.Connect(fake.Endpoint);
                GameLoop.Until(client, () => client.State == ClientState.Ready, 3000, "ready");
                var budget = client.SetBudget(threads: 1);
                GameLoop.Until(client, () => !budget.IsPending, 3000, "budget ok");
                Check.Equal(RequestStatus.Done, budget.Status, "budget status");
                Check.Equal(0, client.BackoffLevel, "no frame reply yet");

                double[] times = { 9.5, 10, 11, 12.25, 13, 14 };
                for (int i = 0; i < 5; i++)
                {
                    client.ReportFrame(times[i]);
                    client.Poll();
                }
                Check.Equal(0L, client.FrameReportsSent, "nothing sent before the 6th frame");
                client.ReportFrame(times[5]);
                client.Poll();
                Check.Equal(1L, client.FrameReportsSent, "one frame op after 6 frames");
                // Poll() falling behind: the buffer keeps the latest 6 of 8 frames.
                client.ReportFrame(1);
                client.ReportFrame(2);
                for (int i = 0; i < 6; i++)
                    client.ReportFrame(times[i]);
                client.Poll();
                Check.Equal(2L, client.FrameReportsSent, "a second frame op");
                GameLoop.Until(client, () => client.BackoffLevel == 2, 3000, "backoff_level from the frame reply");
                GameLoop.Run(client, 20);
                Check.Equal(2L, client.FrameReportsSent, "no more frame ops without more frames");
                Check.Equal(0, client.PendingCount, "frame ops leave nothing pending");

                var sent = fake.Received;
                var bodies = fake.ReceivedBodies;
                int frames = 0;
                string doubles = "cb4023000000000000cb4024000000000000cb4026000000000000"
                                 + "cb4028800000000000cb402a000000000000cb402c000000000000";
                for (int i = 0; i < sent.Count; i++)
                {
                    if ((string)sent[i]["op"] != "frame")
                        continue;
                    frames++;
                    long id = (long)sent[i]["id"];
                    Check.True(id < 128, "a fixint id");
                    Check.Bytes(Vectors.FromHex("84a17601a26964" + id.ToString("x2") + "a26f70a56672616d65a86672616d655f6d7396" + doubles),
                        bodies[i], "frame op " + frames + " on the wire");
                }
                Check.Equal(2, frames, "frame ops received");
                Check.Equal("budget", (string)sent[1]["op"], "budget sent");
                Check.Equal(4, sent[1].Count, "budget carries v, id, op and threads only");
                Check.Equal<object>(1L, sent[1]["threads"], "threads");
                client.Dispose();
            }
        }

        static void ReportFrameAllocatesNothing()
        {
            var idle = new NpcAiClient();
            idle.ReportFrame(16);
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 10000; i++)
                idle.ReportFrame(16 + (i & 7));
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Check.Equal(0L, allocated, "bytes allocated by 10,000 ReportFrame() calls");

            // And the Poll() calls that send the frame ops and read their replies, once warm.
            using (var fake = new FakeSidecar(Answer))
            {
                var client = new NpcAiClient();
                client.Connect(fake.Endpoint);
                GameLoop.Until(client, () => client.State == ClientState.Ready, 3000, "ready");
                for (int i = 0; i < 24; i++)
                {
                    client.ReportFrame(16);
                    client.Poll();
                }
                GameLoop.Until(client, () => client.BackoffLevel == 2, 3000, "frame replies");
                before = GC.GetAllocatedBytesForCurrentThread();
                for (int i = 0; i < 600; i++)
                {
                    client.ReportFrame(16);
                    client.Poll();
                    if ((i & 63) == 0)
                        Thread.Sleep(1);
                }
                allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                long sent = client.FrameReportsSent;
                Console.WriteLine("  600 frames: {0} frame ops sent, {1} bytes allocated by ReportFrame() + Poll()", sent, allocated);
                Check.True(sent >= 100, "frame ops sent: " + sent);
                Check.Equal(0L, allocated, "bytes allocated by ReportFrame() + Poll() sending frame ops");
                GameLoop.Run(client, 50);  // read the last replies: closing with unread data would reset the fake's socket
                client.Dispose();
            }
        }

        static void FindBundleOrder()
        {
            // Each folder in order, then PATH; a folder named like the executable is passed over.
            string root = Path.Combine(Path.GetTempPath(), "npcai bundle unit " + Guid.NewGuid().ToString("N"));
            string first = Path.Combine(root, "game"), second = Path.Combine(first, "npcai"), onPath = Path.Combine(root, "bin");
            foreach (var d in new[] { first, second, onPath })
                Directory.CreateDirectory(d);
            string name = SidecarLauncher.BundleExecutable;
            string savedPath = Environment.GetEnvironmentVariable("PATH");
            try
            {
                Environment.SetEnvironmentVariable("PATH", onPath + Path.PathSeparator + savedPath);
                var folders = new[] { first, second };
                Check.Equal<string>(null, SidecarLauncher.FindBundle(folders, false), "nothing in empty folders");
                File.WriteAllText(Path.Combine(onPath, name), "");
                Check.Equal(Path.Combine(onPath, name), SidecarLauncher.FindBundle(folders), "on PATH");
                Check.Equal<string>(null, SidecarLauncher.FindBundle(folders, false), "PATH not searched when told not to");
                File.WriteAllText(Path.Combine(second, name), "");
                Check.Equal(Path.Combine(second, name), SidecarLauncher.FindBundle(folders), "a game folder before PATH");
                Directory.CreateDirectory(Path.Combine(first, name));
                Check.Equal(Path.Combine(second, name), SidecarLauncher.FindBundle(folders), "a folder of that name is passed over");
                File.WriteAllText(Path.Combine(root, name), "");
                Check.Equal(Path.Combine(root, name), SidecarLauncher.FindBundle(new[] { root, second }), "the first folder wins");
                Check.Equal(Path.Combine(onPath, name), SidecarLauncher.FindBundle(null), "no folders: PATH");
            }
            finally
            {
                Environment.SetEnvironmentVariable("PATH", savedPath);
                Directory.Delete(root, true);
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
