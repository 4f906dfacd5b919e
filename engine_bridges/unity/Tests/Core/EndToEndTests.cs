using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Threading;

namespace NpcAi.Tests
{
    /// <summary>
    /// Against a real `npcai serve` started by the bridge's launcher (interpreter from NPCAI_PYTHON,
    /// default python3, run as `-m npcai` from the repository root; or NPCAI_SIDECAR, a bundled npcai-sidecar). The cases share one client
    /// and run in order, like a play session; every wait is bounded.
    /// </summary>
    public static class EndToEndTests
    {
        const int ReplyTimeoutMs = 30000;
        static NpcAiClient client;

        public static IEnumerable<TestCase> Cases()
        {
            yield return new TestCase("e2e", "e2e.launch_failure_reports_stderr", LaunchFailureReportsStderr);
            yield return new TestCase("e2e", "e2e.launch_and_hello", LaunchAndHello);
            yield return new TestCase("e2e", "e2e.npc", DefineNpc);
            yield return new TestCase("e2e", "e2e.say_streams_tokens", SayStreamsTokens);
            yield return new TestCase("e2e", "e2e.decide_choices", DecideChoices);
            yield return new TestCase("e2e", "e2e.decide_schema", DecideSchema);
            yield return new TestCase("e2e", "e2e.action_decided_and_reported", ActionDecidedAndReported);
            yield return new TestCase("e2e", "e2e.chain_steps_and_results", ChainStepsAndResults);
            yield return new TestCase("e2e", "e2e.cancel_mid_stream", CancelMidStream);
            yield return new TestCase("e2e", "e2e.deadline_fallback", DeadlineFallback);
            yield return new TestCase("e2e", "e2e.budget_threads", BudgetThreads);
            yield return new TestCase("e2e", "e2e.frame_backoff", FrameBackoff);
            yield return new TestCase("e2e", "e2e.connect_to_running_sidecar", ConnectToRunningSidecar);
            yield return new TestCase("e2e", "e2e.sidecar_killed_mid_request", SidecarKilledMidRequest);
            yield return new TestCase("e2e", "e2e.relaunch_and_hello", RelaunchAndHello);
            yield return new TestCase("e2e", "e2e.dispose_shuts_sidecar_down", DisposeShutsSidecarDown);
            yield return new TestCase("e2e", "e2e.ready_file_launch", ReadyFileLaunch);
            yield return new TestCase("e2e", "e2e.token_kept_off_the_command_line", TokenKeptOffTheCommandLine);
            yield return new TestCase("e2e", "e2e.bundle_before_path", BundleBeforePath);
        }

        public static SidecarOptions Sidecar(bool readyFile = false)
        {
            string python = Environment.GetEnvironmentVariable("NPCAI_PYTHON");
            string bundled = Environment.GetEnvironmentVariable("NPCAI_SIDECAR");  // a bundled npcai-sidecar
            return new SidecarOptions
            {
                Command = !string.IsNullOrEmpty(bundled) ? bundled : string.IsNullOrEmpty(python) ? "python3" : python,
                CommandArgs = !string.IsNullOrEmpty(bundled) ? new string[0] : new[] { "-m", "npcai" },
                WorkingDirectory = Vectors.RepoRoot(),
                UseReadyFile = readyFile,
                ReadyTimeoutMs = 120000,
            };
        }

        public static void WaitReady(NpcAiClient c)
        {
            GameLoop.Until(c, () => c.State == ClientState.Ready || c.State == ClientState.Disconnected, 120000, "hello");
            Check.Equal(ClientState.Ready, c.State, "client state (" + c.LastError + ")");
        }

        static void LaunchFailureReportsStderr()
        {
            var options = Sidecar();
            if (options.CommandArgs.Length == 0)  // the bundled sidecar, given a model file that is not there
                options.ServeArgs = new[] { "--model", "model missing.gguf" };
            else
                options.CommandArgs = new[] { "-c", "import sys; sys.stderr.write('npcai: model missing\\n'); sys.exit(2)" };
            var failing = new NpcAiClient();
            string reason = null;
            failing.Disconnected += (c, r) => reason = r;
            failing.Launch(options);
            var say = failing.Say("brom", "Hi");
            GameLoop.Until(failing, () => reason != null, ReplyTimeoutMs, "the launch to fail");
            Check.True(reason.Contains("exit code 2") && reason.Contains("model missing"), "reason: " + reason);
            Check.Equal("unavailable", say.ErrorCode, "the request made meanwhile ends with an error");
            failing.Dispose();
        }

        static void LaunchAndHello()
        {
            client = new NpcAiClient();
            var clock = Stopwatch.StartNew();
            client.Launch(Sidecar());
            Check.Equal(ClientState.Launching, client.State, "state right after Launch()");
            var early = client.Ping();  // made before the sidecar is up: queued behind hello
            WaitReady(client);
            Console.WriteLine("  sidecar ready at {0} after {1} ms", client.Endpoint, clock.ElapsedMilliseconds);
            Check.Equal<object>(1L, client.ServerInfo["protocol"], "protocol");
            Check.Equal<object>((long)client.Launcher.Process.Id, client.ServerInfo["pid"], "pid is our child's");
            GameLoop.Until(client, () => !early.IsPending, ReplyTimeoutMs, "early ping");
            Check.Equal(RequestStatus.Done, early.Status, "early ping");
        }

        static void DefineNpc()
        {
            RequireReady();
            var npc = Await(client.DefineNpc("brom", "You are Brom, a gruff but kind blacksmith in a mountain village."));
            Check.Equal(RequestStatus.Done, npc.Status, "npc status (" + npc.ErrorMessage + ")");
            Check.True(Convert.ToInt64(npc.Fields["cached_tokens"]) > 0, "the persona was cached");
        }

        static void SayStreamsTokens()
        {
            RequireReady();
            var chunks = new List<string>();
            var say = client.Say("brom", "Good morning! Any work for me today?", new SayOptions { MaxTokens = 32, Seed = 7 });
            say.Token += (r, chunk) => chunks.Add(chunk);
            Await(say);
            Check.Equal(RequestStatus.Done, say.Status, "say status (" + say.ErrorMessage + ")");
            Check.True(chunks.Count > 0, "tokens were streamed");
            Check.Equal(string.Join("", chunks.ToArray()), say.Text, "done text is the concatenated tokens");
            Check.Equal<object>(say.Text, say.Value, "value is the line");
            Check.True(!say.TimedOut && !say.UsedFallback, "no deadline involved");
            Console.WriteLine("  brom: {0} ({1} chunks)", say.Text.Trim(), chunks.Count);
        }

        static void DecideChoices()
        {
            RequireReady();
            var choices = new[] { "fight", "flee", "talk" };
            var task = client.DecideAsync("A band of goblins blocks the road.", choices, new DecideOptions { Npc = "brom" });
            GameLoop.Until(client, () => task.IsCompleted, ReplyTimeoutMs, "decide");
            var decide = task.Result;
            Check.True(Array.IndexOf(choices, decide.Value as string) >= 0, "value is one of the choices: " + decide.Value);
            double sum = 0;
            foreach (var choice in choices)
                sum += decide.Probs[choice];
            Check.True(Math.Abs(sum - 1) < 1e-6, "probs sum to 1: " + sum);
            Console.WriteLine("  brom decides: {0} (p={1:0.000})", decide.Value, decide.Probs[(string)decide.Value]);
        }

        static void DecideSchema()
        {
            RequireReady();
            var schema = new Dictionary<string, object>
            {
                { "type", "object" },
                { "properties", new Dictionary<string, object>
                    {
                        { "act", new Dictionary<string, object> { { "enum", new[] { "hide", "fight" } } } },
                        { "loud", new Dictionary<string, object> { { "type", "boolean" } } },
                    }
                },
                { "required", new[] { "act", "loud" } },
                { "additionalProperties", false },
            };
            var task = client.DecideSchemaAsync("Night. A guard approaches.", schema,
                new DecideOptions { Npc = "brom", MaxTokens = 48 });
            GameLoop.Until(client, () => task.IsCompleted, 60000, "schema decide");
            var decide = task.Result;
            Check.True(!decide.UsedFallback, "a real answer (" + decide.FinishReason + ", " + decide.Text + ")");
            var value = decide.Value as IDictionary<string, object>;
            Check.True(value != null, "value is a map: " + decide.Value);
            Check.True((string)value["act"] == "hide" || (string)value["act"] == "fight", "act in the enum");
            Check.True(value["loud"] is bool, "loud is a bool");
            Console.WriteLine("  schema decision: {0}", decide.Text);
        }

        static readonly string[] Items = { "sword", "shield", "bread" };

        static void ActionDecidedAndReported()
        {
            RequireReady();
            var give = new Dictionary<string, object>
            {
                { "type", "object" },
                { "properties", new Dictionary<string, object> { { "item", new Dictionary<string, object> { { "enum", Items } } } } },
                { "required", new[] { "item" } },
            };
            var actions = new[]
            {
                new ActionSpec("give_item", "give the customer what they paid for", give),
                new ActionSpec("refuse", "refuse the deal"),
            };
            var npc = Await(client.DefineNpc("smith", "You are Brom, the village blacksmith. You sell swords and shields.",
                actions, seed: 5));
            Check.Equal(RequestStatus.Done, npc.Status, "npc with actions (" + npc.ErrorMessage + ")");
            var acts = new List<NpcAction>();
            Action<NpcRequest, string, string, IReadOnlyDictionary<string, object>> heard = (r, who, name, args) =>
                acts.Add(r.Action);
            client.ActionRequested += heard;
            var decide = Await(client.DecideAction("smith", "A customer hands you 20 gold for a shield."));
            client.ActionRequested -= heard;
            Check.Equal(RequestStatus.Done, decide.Status, "decide with actions (" + decide.ErrorMessage + ")");
            Check.True(!decide.UsedFallback, "a real answer (" + decide.FinishReason + ")");
            Check.Equal(1, acts.Count, "ActionRequested fired once");
            var act = acts[0];
            Check.True(act == decide.Action && act.Npc == "smith", "the request's action, for the NPC: " + act);
            if (act.Name == "give_item")
                Check.True(act.Args.ContainsKey("item") && Array.IndexOf(Items, act.Args["item"] as string) >= 0,
                    "give_item's item is one of the enum: " + act);
            else
                Check.True(act.Name == "refuse" && act.Args.Count == 0, "refuse takes no arguments: " + act);
            Check.Equal<object>(act.Name, Map(decide.Value, "value")["name"], "the value is the action");
            Check.True(decide.Probs.Count == 2 && decide.Probs.ContainsKey("give_item") && decide.Probs.ContainsKey("refuse"),
                "probs over the declared actions");
            var told = Await(client.ActResult("smith", act.Name, "The customer is satisfied."));
            Check.Equal(RequestStatus.Done, told.Status, "act_result (" + told.ErrorMessage + ")");
            Console.WriteLine("  smith acts: {0} (p={1:0.000})", act, decide.Probs[act.Name]);
        }

        static void ChainStepsAndResults()
        {
            RequireReady();
            var steps = new object[]
            {
                new Dictionary<string, object> { { "op", "decide" }, { "as", "intent" }, { "npc", "smith" },
                    { "situation", "A customer asks for a discount on a shield." },
                    { "choices", new[] { "haggle", "refuse", "agree" } }, { "fallback", "refuse" } },
                new Dictionary<string, object> { { "op", "say" }, { "as", "line" }, { "npc", "smith" },
                    { "text", "Can I have the shield for less? (You {intent}.)" }, { "max_tokens", 16 }, { "seed", 1 },
                    { "fallback", "Hm." } },
                new Dictionary<string, object> { { "op", "decide" }, { "as", "emotion" },
                    { "situation", "The blacksmith said: {line}" }, { "choices", new[] { "happy", "angry", "calm" } },
                    { "fallback", "calm" } },
            };
            var chain = client.Chain(steps);
            var seen = new List<string>();
            chain.Step += (r, step) => seen.Add(step["as"] + "#" + step["step"]);
            GameLoop.Until(client, () => !chain.IsPending, 60000, "chain");
            Check.Equal(RequestStatus.Done, chain.Status, "chain status (" + chain.ErrorMessage + ")");
            Check.Equal("intent#0,line#1,emotion#2", string.Join(",", seen.ToArray()), "a step event per step, in order");
            var results = chain.Results;
            Check.True(results != null, "done.results");
            Check.True(Array.IndexOf(new[] { "haggle", "refuse", "agree" }, results["intent"] as string) >= 0,
                "intent: " + results["intent"]);
            Check.True(Array.IndexOf(new[] { "happy", "angry", "calm" }, results["emotion"] as string) >= 0,
                "emotion: " + results["emotion"]);
            Check.Equal<object>(chain.Steps[1]["value"], results["line"], "the line step's value is its result");
            Check.Equal<object>(chain.StreamedText, results["line"], "the say step streamed its line");
            Console.WriteLine("  chain: {0} / {1} / {2}", results["intent"], results["line"], results["emotion"]);
        }

        static void CancelMidStream()
        {
            RequireReady();
            const string prompt = "Tell me the whole long history of your forge, from your grandfather's day.";
            var story = client.Say("brom", prompt, new SayOptions { MaxTokens = 300, Temperature = 1.0, Seed = 3 });
            int tokens = 0, tokensAtCancel = -1;
            story.Token += (r, chunk) =>
            {
                if (++tokens == 3)
                {
                    tokensAtCancel = tokens;
                    client.Cancel(r);
                }
            };
            Await(story);
            Check.Equal(RequestStatus.Cancelled, story.Status, "status after Cancel() at token 3 (" + story.Text + ")");
            Check.True(tokens - tokensAtCancel < 20, "streaming stopped soon after: " + tokens + " tokens in all");

            // The awaitable way: a CancellationToken cancels the request.
            var source = new CancellationTokenSource();
            var again = client.Say("brom", prompt, new SayOptions { MaxTokens = 300, Temperature = 1.0, Seed = 4 });
            again.Token += (r, chunk) => source.Cancel();
            var task = client.WhenEnded(again, source.Token);
            GameLoop.Until(client, () => task.IsCompleted, ReplyTimeoutMs, "cancelled task");
            Check.True(task.IsCanceled, "task cancelled, status " + task.Status);
            Check.Equal(RequestStatus.Cancelled, again.Status, "request cancelled");
        }

        static void DeadlineFallback()
        {
            RequireReady();
            var say = client.Say("brom", "Recite every song you know.",
                new SayOptions { MaxTokens = 300, DeadlineMs = 40, Fallback = "Hmm." });
            var decide = client.Decide("Quick! A dragon!", new[] { "fight", "flee" },
                new DecideOptions { Npc = "brom", DeadlineMs = 0, Fallback = "flee" });
            Await(say);
            Await(decide);
            Check.True(say.TimedOut && say.UsedFallback, "say timed out and used its fallback");
            Check.Equal<object>("Hmm.", say.Value, "say value is the fallback");
            Check.Equal("deadline", say.FinishReason, "say finish_reason");
            Check.True(decide.TimedOut && decide.UsedFallback, "decide timed out and used its fallback");
            Check.Equal<object>("flee", decide.Value, "decide value is the fallback");
            // The sidecar still serves afterwards.
            Check.Equal(RequestStatus.Done, Await(client.Ping()).Status, "ping after timeouts");
        }

        static IDictionary<string, object> Map(object value, string what)
        {
            var map = value as IDictionary<string, object>;
            Check.True(map != null, what + " is a map: " + value);
            return map;
        }

        static void BudgetThreads()
        {
            RequireReady();
            var budget = Await(client.SetBudget(threads: 1));
            Check.Equal(RequestStatus.Done, budget.Status, "budget status (" + budget.ErrorMessage + ")");
            Check.Equal<object>(1L, Map(budget.Fields["effective"], "effective")["threads"], "effective threads in budget's ok");
            var stats = Await(client.Stats());
            var engineBudget = Map(Map(stats.Fields["engine"], "engine")["budget"], "engine.budget");
            Check.Equal(1L, Convert.ToInt64(Map(engineBudget["effective"], "engine.budget.effective")["threads"]),
                "stats engine.budget.effective.threads");
            Check.Equal(1L, Convert.ToInt64(Map(engineBudget["budget"], "engine.budget.budget")["threads"]),
                "stats engine.budget.budget.threads");
        }

        static void FrameBackoff()
        {
            RequireReady();
            var budget = Await(client.SetBudget(frameMs: 16.7));
            Check.Equal(RequestStatus.Done, budget.Status, "budget status (" + budget.ErrorMessage + ")");
            Check.Equal(0, client.BackoffLevel, "no back-off before frames are reported");
            long sentBefore = client.FrameReportsSent;
            var clock = Stopwatch.StartNew();
            // 40 ms frames against a 16.7 ms target; the sidecar escalates at most one level per 250 ms.
            GameLoop.Until(client, () =>
            {
                client.ReportFrame(40);
                return client.BackoffLevel > 0;
            }, ReplyTimeoutMs, "BackoffLevel > 0");
            Console.WriteLine("  back-off level {0} after {1} ms, {2} frame ops", client.BackoffLevel,
                clock.ElapsedMilliseconds, client.FrameReportsSent - sentBefore);
            var stats = Await(client.Stats());
            var engineBudget = Map(Map(stats.Fields["engine"], "engine")["budget"], "engine.budget");
            Check.True(Convert.ToInt64(engineBudget["backoff_level"]) > 0, "stats shows the back-off: " + engineBudget["backoff_level"]);

            // Back to full speed for the cases after this one: no frame target, the sidecar's own threads.
            var reset = Await(client.SetBudget(threads: 0, frameMs: 0));
            Check.Equal(RequestStatus.Done, reset.Status, "reset status");
            GameLoop.Until(client, () =>
            {
                client.ReportFrame(40);
                return client.BackoffLevel == 0;
            }, ReplyTimeoutMs, "BackoffLevel back to 0 without a frame target");
        }

        static void ConnectToRunningSidecar()
        {
            RequireReady();
            var second = new NpcAiClient(new NpcAiClientOptions { ClientName = "second" });
            second.Connect(client.Endpoint);
            WaitReady(second);
            Check.True(second.Launcher == null, "a connected client owns no process");
            var ping = second.Ping();
            GameLoop.Until(second, () => !ping.IsPending, ReplyTimeoutMs, "second client's ping");
            Check.Equal(RequestStatus.Done, ping.Status, "ping over the second connection");
            second.Dispose();
            Check.Equal(RequestStatus.Done, Await(client.Ping()).Status, "the sidecar survives a connected client's Dispose()");
        }

        static void SidecarKilledMidRequest()
        {
            RequireReady();
            string lost = null;
            Action<NpcAiClient, string> onLost = (c, reason) => lost = reason;
            client.Disconnected += onLost;
            var story = client.Say("brom", "Tell me a very long tale about dragons and dwarves.",
                new SayOptions { MaxTokens = 300, Temperature = 1.0, Seed = 5, DeadlineMs = 8000, Fallback = "..." });
            var other = client.Say("brom", "And another one, even longer.", new SayOptions { MaxTokens = 300 });
            var killedAt = new Stopwatch();
            story.Token += (r, chunk) =>
            {
                if (!killedAt.IsRunning)
                {
                    client.Launcher.Process.Kill();
                    killedAt.Start();
                }
            };
            GameLoop.Until(client, () => !story.IsPending && !other.IsPending, ReplyTimeoutMs, "requests to end after the kill");
            client.Disconnected -= onLost;
            Check.True(killedAt.IsRunning, "the sidecar was killed mid-stream");
            Console.WriteLine("  requests ended {0} ms after the kill: {1}", killedAt.ElapsedMilliseconds, lost);
            Check.True(killedAt.ElapsedMilliseconds < 8000, "ended within the deadline");
            Check.Equal(RequestStatus.Done, story.Status, "the request with a fallback ends done");
            Check.True(story.UsedFallback && (string)story.Value == "..." && story.FinishReason == "unavailable",
                "with its fallback, finish_reason unavailable");
            Check.Equal(RequestStatus.Error, other.Status, "the request without a fallback ends with an error");
            Check.Equal("unavailable", other.ErrorCode, "error code");
            Check.Equal(ClientState.Disconnected, client.State, "client state");
            Check.True(lost != null, "Disconnected fired");
        }

        static void RelaunchAndHello()
        {
            Check.True(client != null, "a client from the earlier cases");
            object oldPid = client.ServerInfo == null ? null : client.ServerInfo["pid"];
            client.Relaunch();
            WaitReady(client);
            Check.True(!Equals(oldPid, client.ServerInfo["pid"]), "a new sidecar process");
            Check.Equal(RequestStatus.Done, Await(client.Ping()).Status, "ping after relaunch");
            Check.Equal(RequestStatus.Done, Await(client.DefineNpc("brom", "You are Brom, a blacksmith.")).Status,
                "NPCs are defined again on the new sidecar");
        }

        static void DisposeShutsSidecarDown()
        {
            RequireReady();
            var launcher = client.Launcher;
            var clock = Stopwatch.StartNew();
            client.Dispose();
            Console.WriteLine("  Dispose() took {0} ms; sidecar exit code {1}", clock.ElapsedMilliseconds, launcher.ExitCode);
            Check.Equal<int?>(0, launcher.ExitCode, "the sidecar exited cleanly after shutdown");
            Check.Equal(ClientState.Disposed, client.State, "client state");
        }

        static void ReadyFileLaunch()
        {
            var viaFile = new NpcAiClient();
            viaFile.Launch(Sidecar(readyFile: true));
            WaitReady(viaFile);
            var ping = viaFile.Ping();
            GameLoop.Until(viaFile, () => !ping.IsPending, ReplyTimeoutMs, "ping");
            Check.Equal(RequestStatus.Done, ping.Status, "ping via a ready-file launch");
            var launcher = viaFile.Launcher;
            viaFile.Dispose();
            Check.Equal<int?>(0, launcher.ExitCode, "clean exit");
        }

        /// <summary>
        /// Any user of the machine can read a process's command line (/proc/PID/cmdline): the launcher hands
        /// the token to the sidecar in $NPCAI_TOKEN, and hello with it works while a client without it is refused.
        /// </summary>
        static void TokenKeptOffTheCommandLine()
        {
            const string secret = "s3cret-from-the-game";
            var guarded = new NpcAiClient(new NpcAiClientOptions { Token = secret });
            guarded.Launch(Sidecar());
            WaitReady(guarded);
            string cmdline = "/proc/" + guarded.Launcher.Process.Id + "/cmdline";
            if (File.Exists(cmdline))
            {
                string argv = File.ReadAllText(cmdline).Replace('\0', ' ');
                Check.True(!argv.Contains(secret) && !argv.Contains("--token"), "the token is not in argv: " + argv);
            }
            var stranger = new NpcAiClient();
            string reason = null;
            stranger.Disconnected += (c, r) => reason = r;
            stranger.Connect(guarded.Endpoint);
            GameLoop.Until(stranger, () => reason != null, ReplyTimeoutMs, "the refusal of a client without the token");
            Check.True(reason.Contains("unauthorized"), "reason: " + reason);
            stranger.Dispose();
            var ping = guarded.Ping();
            GameLoop.Until(guarded, () => !ping.IsPending, ReplyTimeoutMs, "ping");
            Check.Equal(RequestStatus.Done, ping.Status, "ping after hello with the token");
            var launcher = guarded.Launcher;
            guarded.Dispose();
            Check.Equal<int?>(0, launcher.ExitCode, "clean exit");
        }

        /// <summary>
        /// What `npcai bundle` ships: an executable npcai-sidecar taking serve's flags; here a script
        /// that runs this Python's `-m npcai serve "$@"`. One lies in the game's folder (what
        /// NpcAiBehaviour passes: StreamingAssets/npcai), one on PATH; the configured command does
        /// not exist, so a wrong choice fails. The game's folder wins, then PATH.
        /// </summary>
        static void BundleBeforePath()
        {
            if (Environment.OSVersion.Platform == PlatformID.Win32NT)
                throw new SkipException("the stand-in sidecar is a shell script");
            string python = Environment.GetEnvironmentVariable("NPCAI_PYTHON");
            if (string.IsNullOrEmpty(python))
                python = "python3";
            string root = Path.Combine(Path.GetTempPath(), "npcai bundle e2e " + Guid.NewGuid().ToString("N"));
            string game = Path.Combine(root, "StreamingAssets", "npcai"), bin = Path.Combine(root, "bin");
            string inGame = Path.Combine(game, "npcai-sidecar"), onPath = Path.Combine(bin, "npcai-sidecar");
            string savedPath = Environment.GetEnvironmentVariable("PATH");
            try
            {
                foreach (var script in new[] { inGame, onPath })
                {
                    Directory.CreateDirectory(Path.GetDirectoryName(script));
                    string bundled = Environment.GetEnvironmentVariable("NPCAI_SIDECAR");  // set: start the real bundle
                    File.WriteAllText(script, string.IsNullOrEmpty(bundled)
                        ? "#!/bin/sh\nexec '" + python + "' -m npcai serve \"$@\"\n"
                        : "#!/bin/sh\nexec '" + bundled + "' \"$@\"\n");
                    string chmodProgram = File.Exists("/bin/chmod") ? "/bin/chmod" : "chmod";  // PATH may be bare
                    using (var chmod = Process.Start(new ProcessStartInfo(chmodProgram, "755 \"" + script + "\"") { UseShellExecute = false }))
                        chmod.WaitForExit();
                }
                Environment.SetEnvironmentVariable("PATH", bin + Path.PathSeparator + savedPath);
                foreach (var expected in new[] { inGame, onPath })
                {
                    var options = Sidecar();
                    options.Command = Path.Combine(root, "no such npcai");
                    options.CommandArgs = new string[0];
                    options.BundleSearchFolders = new[] { Path.Combine(root, "StreamingAssets"), game };
                    var shipped = new NpcAiClient();
                    shipped.Launch(options);
                    Check.Equal(expected, shipped.Launcher.Program, "the program started");
                    WaitReady(shipped);
                    var npc = shipped.DefineNpc("brom", "You are Brom, the village blacksmith.");
                    GameLoop.Until(shipped, () => !npc.IsPending, ReplyTimeoutMs, "npc");
                    Check.Equal(RequestStatus.Done, npc.Status, "npc via " + expected);
                    var launcher = shipped.Launcher;
                    shipped.Dispose();
                    Check.Equal<int?>(0, launcher.ExitCode, "clean exit");
                    Console.WriteLine("  started {0}", expected);
                    File.Delete(inGame);  // next round: only the one on PATH is left
                }
            }
            finally
            {
                Environment.SetEnvironmentVariable("PATH", savedPath);
                Directory.Delete(root, true);
            }
        }

        static void RequireReady()
        {
            if (client == null || client.State != ClientState.Ready)
                throw new TestFailure("needs the sidecar from e2e.launch_and_hello, which is not ready");
        }

        static NpcRequest Await(NpcRequest request)
        {
            GameLoop.Until(client, () => !request.IsPending, ReplyTimeoutMs, request.ToString());
            return request;
        }
    }
}
