using System;
using System.Collections;
using System.Collections.Generic;
using System.Diagnostics;
using System.Net;
using System.Threading;
using System.Threading.Tasks;

namespace NpcAi
{
    public enum ClientState
    {
        /// <summary>Neither launched nor connected yet.</summary>
        Stopped,
        /// <summary>The sidecar is starting; waiting for its READY line.</summary>
        Launching,
        /// <summary>TCP connect, ZMTP handshake and hello in progress.</summary>
        Connecting,
        /// <summary>hello answered ok.</summary>
        Ready,
        /// <summary>The sidecar died, refused us, or could not be reached; see LastError. Relaunch() starts over.</summary>
        Disconnected,
        Disposed,
    }

    public sealed class NpcAiClientOptions
    {
        public NpcAiClientOptions()
        {
            MaxMessagesPerPoll = 64;
            PollBudgetMicros = 1000;
            ClientName = "npcai.unity";
            ConnectTimeoutMs = 5000;
            MaxFrameBytes = 16 << 20;
            MaxDepth = 64;
            FrameReportInterval = 6;
        }

        /// <summary>Poll() handles at most this many replies per call.</summary>
        public int MaxMessagesPerPoll { get; set; }
        /// <summary>Poll() stops taking replies once it has run this long (checked after each reply).</summary>
        public int PollBudgetMicros { get; set; }
        /// <summary>Sent in hello, for the sidecar's logs.</summary>
        public string ClientName { get; set; }
        /// <summary>The sidecar's shared secret, if it has one; Launch() passes it in the sidecar's environment ($NPCAI_TOKEN).</summary>
        public string Token { get; set; }
        /// <summary>How long TCP connect + handshake + hello may take.</summary>
        public int ConnectTimeoutMs { get; set; }
        /// <summary>A larger incoming frame drops the connection instead of growing memory.</summary>
        public int MaxFrameBytes { get; set; }
        /// <summary>Deepest nesting accepted in a reply (the reply map is level 1).</summary>
        public int MaxDepth { get; set; }
        /// <summary>ReportFrame() times are sent as one frame op every this many frames (at least 1).</summary>
        public int FrameReportInterval { get; set; }
    }

    /// <summary>
    /// The bridge to one npcai sidecar. Single-threaded by design: call every method, and
    /// <see cref="Poll"/> once per frame, from the game thread. Poll() never blocks, handles a
    /// bounded number of replies in a bounded time, and runs all callbacks (request events,
    /// Connected, Disconnected, task continuations without a synchronization context).
    /// An idle Poll() allocates nothing.
    /// </summary>
    public sealed class NpcAiClient : IDisposable
    {
        readonly NpcAiClientOptions options;
        readonly RequestEncoder encoder = new RequestEncoder();
        readonly MsgPackReader reader;
        readonly Reply reply = new Reply();
        readonly Dictionary<long, NpcRequest> pending = new Dictionary<long, NpcRequest>();
        readonly List<NpcRequest> expired = new List<NpcRequest>();
        readonly List<NpcRequest> localCancels = new List<NpcRequest>();
        readonly Queue<NpcRequest> threadCancels = new Queue<NpcRequest>();
        readonly Action<object> cancelFromAnyThread;
        readonly long budgetTicks;
        readonly double[] frameTimes;           // ReportFrame()'s buffer, oldest first
        readonly long[] frameIds = new long[8]; // ids of the last frame ops sent, whose ok carries backoff_level
        int frameCount;
        int frameIdNext;
        int threadCancelCount;

        ZmtpDealer dealer;
        SidecarOptions sidecarOptions;
        string connectEndpoint;
        long stateSince;
        long nextId;
        long nextDeadline = long.MaxValue;
        bool polling;
        bool inMultipart;

        public NpcAiClient(NpcAiClientOptions options = null)
        {
            this.options = options ?? new NpcAiClientOptions();
            // The limits every bridge shares (docs/BRIDGES.md, "Replies"): a str or bin is bounded by the frame.
            reader = new MsgPackReader(this.options.MaxDepth, 65536, this.options.MaxFrameBytes);
            budgetTicks = this.options.PollBudgetMicros * Stopwatch.Frequency / 1000000;
            cancelFromAnyThread = CancelFromAnyThread;
            frameTimes = new double[Math.Max(1, this.options.FrameReportInterval)];
        }

        public ClientState State { get; private set; }
        /// <summary>Why the client is Disconnected.</summary>
        public string LastError { get; private set; }
        /// <summary>The endpoint in use (from the READY line when launched).</summary>
        public string Endpoint { get; private set; }
        /// <summary>The child process when this client launched the sidecar; null when it connected to one.</summary>
        public SidecarLauncher Launcher { get; private set; }
        /// <summary>hello's answer: protocol, server, models, limits, pid, threads.</summary>
        public IDictionary<string, object> ServerInfo { get; private set; }
        /// <summary>Requests that have not ended yet (including the bridge's own hello and cancels).</summary>
        public int PendingCount { get { return pending.Count; } }
        /// <summary>
        /// The sidecar's back-off level (0-3) from the latest frame reply: 0 = full speed; higher =
        /// it is yielding more of the machine because frames ran over the budget's frame_ms. 0 on a new connection.
        /// </summary>
        public int BackoffLevel { get; private set; }
        /// <summary>frame ops sent so far.</summary>
        public long FrameReportsSent { get; private set; }

        /// <summary>hello was answered: requests are being served.</summary>
        public event Action<NpcAiClient> Connected;
        /// <summary>The connection is gone (reason given); every open request has already ended.</summary>
        public event Action<NpcAiClient, string> Disconnected;
        /// <summary>Something odd that did not end a request: an unreadable reply, an error about no request.</summary>
        public event Action<NpcAiClient, string> Warning;
        /// <summary>
        /// An NPC chose one of its declared actions (npc, name, args valid against its schema): the done of a
        /// say or decide with actions, or such a step of a chain. Runs inside Poll(), right before the request's
        /// Done (for a chain step, right after its Step event); never for a fallback. Carry it out, then tell the
        /// NPC what came of it with <see cref="ActResult"/>.
        /// </summary>
        public event Action<NpcRequest, string, string, IReadOnlyDictionary<string, object>> ActionRequested;

        // --- lifecycle ---------------------------------------------------------------------------

        /// <summary>
        /// Starts `npcai serve` as a child and connects once it is ready, all driven by Poll().
        /// Requests may be made at once; they are sent when the connection opens (their deadlines
        /// run from now). Throws if the command cannot be started.
        /// </summary>
        public void Launch(SidecarOptions sidecar)
        {
            RequireIdle();
            if (Launcher != null)
                Launcher.Dispose();
            Launcher = null;
            sidecarOptions = sidecar;
            connectEndpoint = null;
            var launcher = new SidecarLauncher(sidecar, options.Token);
            launcher.Start();
            Launcher = launcher;
            Endpoint = null;
            Open(ClientState.Launching);
        }

        /// <summary>Connects to a sidecar that is already running (e.g. "tcp://127.0.0.1:5555").</summary>
        public void Connect(string endpoint)
        {
            RequireIdle();
            IPEndPoint address = ZmtpDealer.ParseEndpoint(endpoint);
            if (Launcher != null)
                Launcher.Dispose();
            Launcher = null;
            sidecarOptions = null;
            connectEndpoint = endpoint;
            Endpoint = endpoint;
            Open(ClientState.Connecting);
            dealer.Connect(address);
        }

        /// <summary>
        /// Starts over the way the last Launch() or Connect() did. A live connection is dropped
        /// first: its open requests end at once (fallback or "unavailable" error), without a
        /// Disconnected event. NPCs must be defined again on the new sidecar.
        /// </summary>
        public void Relaunch()
        {
            ThrowIfDisposed();
            if (sidecarOptions == null && connectEndpoint == null)
                throw new InvalidOperationException("call Launch() or Connect() before Relaunch()");
            if (State != ClientState.Stopped && State != ClientState.Disconnected)
            {
                Lose("relaunched", false);
                if (State != ClientState.Disconnected)
                    return;  // a request's handler relaunched already
            }
            if (sidecarOptions != null)
                Launch(sidecarOptions);
            else
                Connect(connectEndpoint);
        }

        /// <summary>
        /// Stops a launched sidecar (shutdown, then kill after ShutdownTimeoutMs; this blocks, so
        /// call it when quitting) or just disconnects from one this client did not launch.
        /// Open requests end as cancelled.
        /// </summary>
        public void Dispose()
        {
            if (State == ClientState.Disposed)
                return;
            if (dealer != null && dealer.IsOpen && Launcher != null)
            {
                var body = encoder.Op(++nextId, "shutdown", null, null);
                dealer.Send(body.Data, body.Start, body.Count);
                dealer.FlushBlocking(200);
            }
            if (dealer != null)
                dealer.Dispose();
            dealer = null;
            if (Launcher != null)
            {
                Launcher.Stop();
                Launcher.Dispose();
            }
            SetState(ClientState.Disposed);
            var open = new List<NpcRequest>(pending.Values);
            pending.Clear();
            foreach (var request in open)
                request.Cancel();
        }

        // --- the per-frame pump --------------------------------------------------------------------

        /// <summary>
        /// Does this frame's work without blocking: advances launch and connect, dispatches at most
        /// MaxMessagesPerPoll replies within about PollBudgetMicros, and ends requests whose
        /// deadline has passed. Returns how many replies it handled. Calls from inside a callback
        /// return 0 at once.
        /// </summary>
        public int Poll()
        {
            if (polling || State == ClientState.Disposed)
                return 0;
            polling = true;
            try
            {
                long start = Stopwatch.GetTimestamp();
                if (Volatile.Read(ref threadCancelCount) > 0)
                    TakeThreadCancels();
                if (localCancels.Count > 0)
                    EndLocalCancels();
                if (State == ClientState.Launching)
                    AdvanceLaunch(start);
                int handled = 0;
                var current = dealer;
                if (current != null)
                {
                    current.Update();
                    handled = Receive(current, start);
                    if (frameCount >= frameTimes.Length)
                        SendFrames();
                    if (current == dealer && current.IsClosed)
                        Lose(current.Error, true);
                    else if (State == ClientState.Connecting && Elapsed(stateSince) > options.ConnectTimeoutMs)
                        Lose("no answer to hello within " + options.ConnectTimeoutMs + " ms", true);
                }
                else if (pending.Count > 0)
                {
                    EndAll(State == ClientState.Stopped ? "not launched or connected" : LastError);
                }
                long now = Stopwatch.GetTimestamp();
                if (now >= nextDeadline)
                    ExpireDeadlines(now);
                return handled;
            }
            finally
            {
                polling = false;
            }
        }

        // --- requests --------------------------------------------------------------------------------

        public NpcRequest Ping(RequestOptions options = null)
        {
            ThrowIfDisposed();
            return Submit("ping", encoder.Op(nextId + 1, "ping", null, options), options);
        }

        /// <summary>Defines (or redefines, clearing its history) an NPC; ends with ok once the persona is cached.</summary>
        public NpcRequest DefineNpc(string npc, string persona, string role = null, long? seed = null)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            Require(persona, "persona");
            return Submit("npc", encoder.Npc(nextId + 1, npc, persona, role, seed), null);
        }

        /// <summary>
        /// Defines an NPC with the actions it may take (at most the sidecar's limits.max_actions); a bad action
        /// (a duplicate name, a schema that does not compile) ends the request with bad_request naming it.
        /// </summary>
        public NpcRequest DefineNpc(string npc, string persona, IList<ActionSpec> actions, string role = null,
                                    long? seed = null)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            Require(persona, "persona");
            Require(actions, "actions");
            return Submit("npc", encoder.Npc(nextId + 1, npc, persona, role, seed, actions), null);
        }

        /// <summary>
        /// A line of dialogue; token chunks stream through the Token event (and whole sentences through
        /// Sentence) unless options.Stream is false. With options.AllActions or options.Actions the NPC may act
        /// after the line: request.Action, and <see cref="ActionRequested"/>.
        /// </summary>
        public NpcRequest Say(string npc, string text, SayOptions options = null)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            Require(text, "text");
            var request = Submit("say", encoder.Say(nextId + 1, npc, text, options), options);
            request.ActionNpc = npc;
            request.ActionsAsked = options != null && (options.AllActions || options.Actions != null);
            return request;
        }

        /// <summary>
        /// Which of its declared actions the NPC takes now, and with what arguments: among
        /// <paramref name="actions"/>, or all of them when null. Value is {"name", "args"}, Probs each action's
        /// probability, request.Action the same, and <see cref="ActionRequested"/> fires. options.Npc is unused.
        /// </summary>
        public NpcRequest DecideAction(string npc, string situation, string[] actions = null, DecideOptions options = null)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            Require(situation, "situation");
            var request = Submit("decide", encoder.DecideAction(nextId + 1, npc, situation, actions, options), options);
            request.ActionNpc = npc;
            request.ActionsAsked = true;
            return request;
        }

        /// <summary>Tells the NPC what came of its action <paramref name="name"/>; its next line can refer to it.</summary>
        public NpcRequest ActResult(string npc, string name, string result)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            Require(name, "name");
            Require(result, "result");
            return Submit("act_result", encoder.ActResult(nextId + 1, npc, name, result), null);
        }

        /// <summary>
        /// Runs <paramref name="steps"/> in one request (docs/PROTOCOL.md, "Chains"): each an IDictionary with
        /// "op" (decide, say, observe, route), "as", and that op's fields, where "{name}" in a string field is an
        /// earlier step's value. Each finished step comes as the Step event, say steps stream Token and Sentence,
        /// and Results holds each step's value by name. options.DeadlineMs covers the whole chain.
        /// </summary>
        public NpcRequest Chain(IList steps, RequestOptions options = null)
        {
            ThrowIfDisposed();
            Require(steps, "steps");
            var request = Submit("chain", encoder.Chain(nextId + 1, steps, options), options);
            request.ChainSteps = steps;
            return request;
        }

        /// <summary>Picks one of <paramref name="choices"/>; Probs has every option's probability.</summary>
        public NpcRequest Decide(string situation, string[] choices, DecideOptions options = null)
        {
            ThrowIfDisposed();
            Require(situation, "situation");
            Require(choices, "choices");
            return Submit("decide", encoder.Decide(nextId + 1, situation, choices, null, null, options), options);
        }

        /// <summary>Decides an object valid against a JSON schema, given as nested IDictionary/IList values.</summary>
        public NpcRequest DecideSchema(string situation, IDictionary schema, DecideOptions options = null)
        {
            ThrowIfDisposed();
            Require(situation, "situation");
            Require(schema, "schema");
            return Submit("decide", encoder.Decide(nextId + 1, situation, null, schema, null, options), options);
        }

        /// <summary>Decides a text matching a GBNF grammar: a file name in the sidecar's grammars/ or inline text with "::=".</summary>
        public NpcRequest DecideGrammar(string situation, string grammar, DecideOptions options = null)
        {
            ThrowIfDisposed();
            Require(situation, "situation");
            Require(grammar, "grammar");
            return Submit("decide", encoder.Decide(nextId + 1, situation, null, null, grammar, options), options);
        }

        /// <summary>An event the NPC witnesses; it joins its history.</summary>
        public NpcRequest Observe(string npc, string text)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            Require(text, "text");
            return Submit("observe", encoder.NpcOp(nextId + 1, "observe", npc, text), null);
        }

        public NpcRequest Forget(string npc)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            return Submit("forget", encoder.NpcOp(nextId + 1, "forget", npc, null), null);
        }

        /// <summary>Ends with Fields["state"] (byte[]): the NPC's persona and history, for Load().</summary>
        public NpcRequest Save(string npc)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            return Submit("save", encoder.NpcOp(nextId + 1, "save", npc, null), null);
        }

        public NpcRequest Load(string npc, byte[] state)
        {
            ThrowIfDisposed();
            Require(npc, "npc");
            Require(state, "state");
            return Submit("load", encoder.Load(nextId + 1, npc, state), null);
        }

        /// <summary>
        /// Sets the sidecar's compute budget (op budget). Only the limits given are sent; the others keep
        /// their value. threads: most compute threads (0 = the sidecar's choice); tokensPerS: cap on
        /// dialogue tokens per second (0 = none); share: share of wall time from 0.01 to 1; frameMs: the
        /// game's target frame time (0 = no frame reports), which ReportFrame() times are judged against.
        /// Ends with Fields["budget"] and Fields["effective"]. A relaunched sidecar starts from its defaults.
        /// </summary>
        public NpcRequest SetBudget(int? threads = null, double? tokensPerS = null, double? share = null,
                                    double? frameMs = null)
        {
            ThrowIfDisposed();
            if (threads < 0)
                throw new ArgumentOutOfRangeException("threads", "must be >= 0 (0 = the sidecar's choice)");
            if (tokensPerS.HasValue && !(tokensPerS.Value >= 0))
                throw new ArgumentOutOfRangeException("tokensPerS", "must be >= 0 (0 = no cap)");
            if (share.HasValue && !(share.Value >= 0.01 && share.Value <= 1))
                throw new ArgumentOutOfRangeException("share", "must be from 0.01 to 1");
            if (frameMs.HasValue && !(frameMs.Value >= 0 && frameMs.Value <= 1000))
                throw new ArgumentOutOfRangeException("frameMs", "must be between 0 (no frame target) and 1000");
            return Submit("budget", encoder.Budget(nextId + 1, threads, tokensPerS, share, frameMs), null);
        }

        /// <summary>
        /// Records one frame's duration (ms), e.g. Time.unscaledDeltaTime * 1000. Allocates nothing and
        /// sends nothing: Poll() sends the buffered times as one frame op every FrameReportInterval frames
        /// (dropped while not connected); its answer sets <see cref="BackoffLevel"/>. Negative or NaN
        /// times are ignored. If Poll() falls behind, the oldest times are dropped.
        /// </summary>
        public void ReportFrame(double frameMs)
        {
            if (!(frameMs >= 0) || State == ClientState.Disposed)
                return;
            if (frameCount == frameTimes.Length)
            {
                Array.Copy(frameTimes, 1, frameTimes, 0, frameCount - 1);
                frameCount--;
            }
            frameTimes[frameCount++] = frameMs;
        }

        public NpcRequest Stats()
        {
            ThrowIfDisposed();
            return Submit("stats", encoder.Op(nextId + 1, "stats", null, null), null);
        }

        /// <summary>Any op, with its fields as a map (for ops this bridge has no method for).</summary>
        public NpcRequest Request(string op, IDictionary fields, RequestOptions options = null)
        {
            ThrowIfDisposed();
            Require(op, "op");
            return Submit(op, encoder.Op(nextId + 1, op, fields, options), options);
        }

        /// <summary>
        /// Asks the sidecar to stop the request; it then ends Cancelled (or with its answer, if that
        /// was already on its way). False if it had already ended.
        /// </summary>
        public bool Cancel(NpcRequest request)
        {
            NpcRequest known;
            if (request == null || !pending.TryGetValue(request.Id, out known) || known != request
                || request.RequestKind != NpcRequest.Kind.User)
                return false;
            if (request.CancelRequested)
                return true;
            request.CancelRequested = true;
            if (dealer == null || dealer.IsClosed)
            {
                localCancels.Add(request);
                return true;
            }
            var cancel = Submit("cancel", encoder.Cancel(nextId + 1, request.Id), null, NpcRequest.Kind.Cancel);
            cancel.CancelTarget = request;
            return true;
        }

        // --- awaitables --------------------------------------------------------------------------------

        /// <summary>
        /// A task that ends with the request: its result on Done, an NpcAiException on Error,
        /// cancelled on Cancelled. Cancelling <paramref name="cancel"/> cancels the request (from any thread).
        /// </summary>
        public Task<NpcRequest> WhenEnded(NpcRequest request, CancellationToken cancel = default(CancellationToken))
        {
            return request.Completion(cancel, cancelFromAnyThread);
        }

        public Task<NpcRequest> PingAsync(CancellationToken cancel = default(CancellationToken))
        {
            return cancel.IsCancellationRequested ? Cancelled() : WhenEnded(Ping(), cancel);
        }

        public Task<NpcRequest> DefineNpcAsync(string npc, string persona, string role = null, long? seed = null,
                                               CancellationToken cancel = default(CancellationToken))
        {
            return cancel.IsCancellationRequested ? Cancelled() : WhenEnded(DefineNpc(npc, persona, role, seed), cancel);
        }

        public Task<NpcRequest> SayAsync(string npc, string text, SayOptions options = null,
                                         CancellationToken cancel = default(CancellationToken))
        {
            return cancel.IsCancellationRequested ? Cancelled() : WhenEnded(Say(npc, text, options), cancel);
        }

        public Task<NpcRequest> DecideAsync(string situation, string[] choices, DecideOptions options = null,
                                            CancellationToken cancel = default(CancellationToken))
        {
            return cancel.IsCancellationRequested ? Cancelled() : WhenEnded(Decide(situation, choices, options), cancel);
        }

        public Task<NpcRequest> DecideSchemaAsync(string situation, IDictionary schema, DecideOptions options = null,
                                                  CancellationToken cancel = default(CancellationToken))
        {
            return cancel.IsCancellationRequested ? Cancelled() : WhenEnded(DecideSchema(situation, schema, options), cancel);
        }

        // --- internals ----------------------------------------------------------------------------------

        NpcRequest Submit(string op, ByteBuffer body, RequestOptions requestOptions,
                          NpcRequest.Kind kind = NpcRequest.Kind.User)
        {
            long id = ++nextId;
            long deadline = 0;
            if (requestOptions != null && requestOptions.DeadlineMs.HasValue)
            {
                deadline = Stopwatch.GetTimestamp() + requestOptions.DeadlineMs.Value * Stopwatch.Frequency / 1000;
                if (deadline < nextDeadline)
                    nextDeadline = deadline;
            }
            var request = new NpcRequest(id, op, kind, requestOptions, deadline);
            pending[id] = request;
            if (dealer != null)
                dealer.Send(body.Data, body.Start, body.Count);
            return request;
        }

        // frame ops get no NpcRequest (so that reporting allocates nothing): their ids go in a small ring.
        void SendFrames()
        {
            if (State == ClientState.Ready && dealer != null && dealer.IsOpen)
            {
                long id = ++nextId;
                var body = encoder.Frame(id, frameTimes, frameCount);
                dealer.Send(body.Data, body.Start, body.Count);
                frameIds[frameIdNext] = id;
                frameIdNext = (frameIdNext + 1) % frameIds.Length;
                FrameReportsSent++;
            }
            frameCount = 0;
        }

        bool IsFrameReply(long id)
        {
            for (int i = 0; i < frameIds.Length; i++)
                if (frameIds[i] == id)
                    return true;
            return false;
        }

        void Open(ClientState state)
        {
            dealer = new ZmtpDealer(options.MaxFrameBytes);
            inMultipart = false;
            ServerInfo = null;
            BackoffLevel = 0;
            frameCount = 0;
            SetState(state);
            // hello goes first; requests made before the connection opens queue up behind it.
            Submit("hello", encoder.Hello(nextId + 1, options.ClientName, options.Token), null, NpcRequest.Kind.Hello);
        }

        void AdvanceLaunch(long now)
        {
            string endpoint;
            if (Launcher.TryGetEndpoint(out endpoint))
            {
                IPEndPoint address;
                try
                {
                    address = ZmtpDealer.ParseEndpoint(endpoint);
                }
                catch (Exception e)
                {
                    Lose("the sidecar announced an endpoint this bridge cannot use: " + e.Message, true);
                    return;
                }
                Endpoint = endpoint;
                SetState(ClientState.Connecting);
                dealer.Connect(address);
            }
            else if (Launcher.HasExited)
            {
                Lose("the sidecar exited before it was ready (" + Launcher.Describe() + ")", true);
            }
            else if (Elapsed(stateSince) > sidecarOptions.ReadyTimeoutMs)
            {
                Lose("the sidecar was not ready within " + sidecarOptions.ReadyTimeoutMs + " ms (" + Launcher.Describe() + ")", true);
            }
        }

        int Receive(ZmtpDealer current, long start)
        {
            int handled = 0;
            byte[] data;
            int offset, count;
            bool more;
            while (handled < options.MaxMessagesPerPoll && current == dealer
                   && current.TryReceive(out data, out offset, out count, out more))
            {
                handled++;
                if (more || inMultipart)
                {
                    // Replies are single frames; a multipart message is not ours to read.
                    if (!more)
                        Warn("ignored a multipart message");
                    inMultipart = more;
                    continue;
                }
                Dispatch(data, offset, count);
                if (Stopwatch.GetTimestamp() - start >= budgetTicks)
                    break;
            }
            return handled;
        }

        void Dispatch(byte[] data, int offset, int count)
        {
            reader.Reset(data, offset, count);
            try
            {
                reply.Read(reader);
            }
            catch (MsgPackException e)
            {
                // It still ends the request it names, rather than leaving that to wait forever.
                NpcRequest named;
                if (reply.HasId && pending.TryGetValue(reply.Id, out named))
                    Failed(named, "bad_reply", "the sidecar's reply did not decode: " + e.Message);
                else
                    Warn("unreadable reply: " + e.Message);
                return;
            }
            NpcRequest request;
            if (!reply.HasId || !pending.TryGetValue(reply.Id, out request))
            {
                if (reply.HasId && IsFrameReply(reply.Id))
                {
                    if (reply.Event == ReplyEvent.Ok && reply.BackoffLevel >= 0)
                        BackoffLevel = reply.BackoffLevel;
                    else if (reply.Event == ReplyEvent.Error)
                        Warn("frame report refused: " + reply.Code + ": " + reply.Message);
                    return;
                }
                // Late replies to requests the bridge already timed out are expected; errors are not.
                if (reply.Event == ReplyEvent.Error)
                    Warn("sidecar error about no open request: " + reply.Code + ": " + reply.Message);
                return;
            }
            switch (reply.Event)
            {
                case ReplyEvent.Token:
                    request.AddToken(reply.Text ?? "");
                    return;
                case ReplyEvent.Sentence:
                    request.AddSentence(reply.Text ?? "");
                    return;
                case ReplyEvent.Step:
                    StepEnded(request);
                    return;
                case ReplyEvent.Ok:
                case ReplyEvent.Done:
                    pending.Remove(request.Id);
                    if (reply.Event == ReplyEvent.Done && request.ActionsAsked)
                        RequestAction(request, request.Op, request.ActionNpc, true, reply.ToDictionary());
                    Succeeded(request);
                    return;
                case ReplyEvent.Error:
                    Failed(request, reply.Code ?? "internal", reply.Message ?? "");
                    return;
                case ReplyEvent.Cancelled:
                    pending.Remove(request.Id);
                    request.Cancel();
                    return;
                default:
                    Warn("reply with an unknown event to " + request);
                    return;
            }
        }

        void Failed(NpcRequest request, string code, string message)
        {
            pending.Remove(request.Id);
            if (request.RequestKind == NpcRequest.Kind.Hello)
                Lose("hello was refused: " + code + ": " + message, true);
            else if (request.RequestKind == NpcRequest.Kind.Cancel)
                CancelLocally(request.CancelTarget);
            else
                request.Fail(code, message);
        }

        void Succeeded(NpcRequest request)
        {
            switch (request.RequestKind)
            {
                case NpcRequest.Kind.Hello:
                    ServerInfo = reply.Extra;
                    SetState(ClientState.Ready);
                    var connected = Connected;
                    if (connected != null)
                        connected(this);
                    return;
                case NpcRequest.Kind.Cancel:
                    object found;
                    // found=false: the sidecar never had the target open, so no ending will come for it.
                    if (reply.Extra != null && reply.Extra.TryGetValue("found", out found) && Equals(found, false))
                        CancelLocally(request.CancelTarget);
                    return;
                default:
                    request.Succeed(reply);
                    return;
            }
        }

        void StepEnded(NpcRequest request)
        {
            var step = reply.ToDictionary();
            request.AddStep(step);
            object index;
            var steps = request.ChainSteps;
            if (steps == null || !step.TryGetValue("step", out index) || !(index is long)
                || (long)index < 0 || (long)index >= steps.Count)
                return;
            var asked = steps[(int)(long)index] as IDictionary;
            if (asked != null)
                RequestAction(request, asked["op"] as string, asked["npc"] as string, NpcAction.Asked(asked["actions"]), step);
        }

        void RequestAction(NpcRequest request, string op, string npc, bool asked, IDictionary<string, object> answer)
        {
            object fell;
            bool usedFallback = answer.TryGetValue("used_fallback", out fell) && Equals(fell, true);
            var action = NpcAction.From(op, npc, asked, answer, usedFallback);
            if (action == null)
                return;
            if (request.ChainSteps == null)
                request.SetAction(action);
            var handler = ActionRequested;
            if (handler != null)
                handler(request, action.Npc, action.Name, action.Args);
        }

        void CancelLocally(NpcRequest target)
        {
            if (target != null && pending.Remove(target.Id))
                target.Cancel();
        }

        void ExpireDeadlines(long now)
        {
            nextDeadline = long.MaxValue;
            foreach (var entry in pending)
            {
                long deadline = entry.Value.Deadline;
                if (deadline == 0)
                    continue;
                if (deadline <= now)
                    expired.Add(entry.Value);
                else if (deadline < nextDeadline)
                    nextDeadline = deadline;
            }
            for (int i = 0; i < expired.Count; i++)
                if (pending.Remove(expired[i].Id))  // an earlier handler may have ended it (Dispose, Relaunch)
                    expired[i].TimeOut();
            expired.Clear();
        }

        void EndLocalCancels()
        {
            for (int i = 0; i < localCancels.Count; i++)
                CancelLocally(localCancels[i]);
            localCancels.Clear();
        }

        // CancellationToken callbacks may run on any thread: hand the request to the next Poll().
        void CancelFromAnyThread(object request)
        {
            lock (threadCancels)
            {
                threadCancels.Enqueue((NpcRequest)request);
                Interlocked.Increment(ref threadCancelCount);
            }
        }

        void TakeThreadCancels()
        {
            while (true)
            {
                NpcRequest request;
                lock (threadCancels)
                {
                    if (threadCancels.Count == 0)
                        return;
                    request = threadCancels.Dequeue();
                    Interlocked.Decrement(ref threadCancelCount);
                }
                Cancel(request);
            }
        }

        // The connection is gone: drop it, stop a sidecar we own, and end everything open.
        void Lose(string reason, bool notify)
        {
            if (dealer != null)
                dealer.Dispose();
            dealer = null;
            if (Launcher != null)
                Launcher.Kill();
            LastError = reason;
            SetState(ClientState.Disconnected);
            EndAll(reason);
            if (notify)
            {
                var disconnected = Disconnected;
                if (disconnected != null)
                    disconnected(this, reason);
            }
        }

        void EndAll(string reason)
        {
            var open = new List<NpcRequest>(pending.Values);
            pending.Clear();
            localCancels.Clear();
            foreach (var request in open)
                if (request.RequestKind == NpcRequest.Kind.User)
                    request.Abandon(reason);
        }

        void SetState(ClientState state)
        {
            State = state;
            stateSince = Stopwatch.GetTimestamp();
        }

        void RequireIdle()
        {
            ThrowIfDisposed();
            if (State != ClientState.Stopped && State != ClientState.Disconnected)
                throw new InvalidOperationException("already " + State + "; use Relaunch() to start over");
        }

        void ThrowIfDisposed()
        {
            if (State == ClientState.Disposed)
                throw new ObjectDisposedException("NpcAiClient");
        }

        void Warn(string message)
        {
            var warning = Warning;
            if (warning != null)
                warning(this, message);
        }

        static long Elapsed(long since)
        {
            return (Stopwatch.GetTimestamp() - since) * 1000 / Stopwatch.Frequency;
        }

        static Task<NpcRequest> Cancelled()
        {
            var source = new TaskCompletionSource<NpcRequest>();
            source.SetCanceled();
            return source.Task;
        }

        static void Require(object value, string name)
        {
            if (value == null)
                throw new ArgumentNullException(name);
        }
    }
}
