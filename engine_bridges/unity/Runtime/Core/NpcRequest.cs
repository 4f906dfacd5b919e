using System;
using System.Collections;
using System.Collections.Generic;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace NpcAi
{
    public enum RequestStatus { Pending, Done, Error, Cancelled }

    /// <summary>A request that ended with an error; <see cref="Code"/> is the protocol's error code or "unavailable" (the sidecar is gone).</summary>
    public sealed class NpcAiException : Exception
    {
        public NpcAiException(string code, string message, NpcRequest request)
            : base(code + ": " + message)
        {
            Code = code;
            Request = request;
        }

        public string Code { get; private set; }
        public NpcRequest Request { get; private set; }
    }

    /// <summary>
    /// The handle of one request. Its events run inside <see cref="NpcAiClient.Poll"/>, on the
    /// thread that polls (the game thread), so handlers may touch game objects and may
    /// attach after the request is made: nothing is delivered before the next Poll().
    /// Every request ends exactly once: Done, Error or Cancelled.
    /// </summary>
    public sealed class NpcRequest
    {
        internal enum Kind { User, Hello, Cancel, Shutdown }

        StringBuilder streamed;
        List<string> sentences;
        List<IDictionary<string, object>> steps;
        TaskCompletionSource<NpcRequest> completion;
        CancellationTokenRegistration registration;

        internal NpcRequest(long id, string op, Kind kind, RequestOptions options, long deadline)
        {
            Id = id;
            Op = op;
            RequestKind = kind;
            Deadline = deadline;
            if (options != null && options.HasFallback)
            {
                HasFallback = true;
                FallbackValue = options.Fallback;
            }
        }

        public long Id { get; private set; }
        public string Op { get; private set; }
        public RequestStatus Status { get; private set; }
        public bool IsPending { get { return Status == RequestStatus.Pending; } }

        /// <summary>say: the line; decide: the choice, the parsed object, or the matched text; the fallback when UsedFallback.</summary>
        public object Value { get; private set; }
        /// <summary>The raw generated text (for say, the concatenation of the token chunks).</summary>
        public string Text { get; private set; }
        public int Tokens { get; private set; }
        /// <summary>stop, length, deadline, error; or "unavailable" when the bridge ended it because the sidecar went away.</summary>
        public string FinishReason { get; private set; }
        public bool TimedOut { get; private set; }
        public bool UsedFallback { get; private set; }
        /// <summary>decide with choices: each option's probability.</summary>
        public IDictionary<string, double> Probs { get; private set; }
        public string ErrorCode { get; private set; }
        public string ErrorMessage { get; private set; }
        /// <summary>The ending reply's other fields: ok payloads (cached_tokens, state, found...), timing, forced_tokens.</summary>
        public IDictionary<string, object> Fields { get; private set; }
        /// <summary>
        /// say or decide with actions: the action the NPC chose (null when it just talks, or when the answer is a
        /// fallback). Set before Done runs; <see cref="NpcAiClient.ActionRequested"/> fires with it first.
        /// </summary>
        public NpcAction Action { get; private set; }
        /// <summary>chain: each step's value by its "as" name (done.results); null for other ops.</summary>
        public IDictionary<string, object> Results { get; private set; }
        /// <summary>say: the sentence events so far (joined, the line); chain: those of its say steps.</summary>
        public IList<string> Sentences { get { return sentences ?? (IList<string>)new string[0]; } }
        /// <summary>chain: the step events so far, in order (step, as, value, used_fallback, ...).</summary>
        public IList<IDictionary<string, object>> Steps
        {
            get { return steps ?? (IList<IDictionary<string, object>>)new IDictionary<string, object>[0]; }
        }

        /// <summary>The token chunks received so far, joined.</summary>
        public string StreamedText { get { return streamed == null ? "" : streamed.ToString(); } }

        public event Action<NpcRequest, string> Token;
        /// <summary>A sentence of the line is complete (for text-to-speech and subtitles).</summary>
        public event Action<NpcRequest, string> Sentence;
        /// <summary>chain: a step finished; the map is its step event.</summary>
        public event Action<NpcRequest, IDictionary<string, object>> Step;
        public event Action<NpcRequest> Done;
        public event Action<NpcRequest> Error;
        public event Action<NpcRequest> Cancelled;

        internal Kind RequestKind { get; private set; }
        internal long Deadline { get; private set; }  // Stopwatch timestamp; 0 = none
        internal bool HasFallback { get; private set; }
        internal object FallbackValue { get; private set; }
        internal bool CancelRequested { get; set; }
        internal NpcRequest CancelTarget { get; set; }
        // Where actions may come from: a say/decide with actions (its npc), or a chain's steps.
        internal string ActionNpc { get; set; }
        internal bool ActionsAsked { get; set; }
        internal IList ChainSteps { get; set; }
        int streamedTokens;

        public override string ToString()
        {
            return Op + " #" + Id + " " + Status;
        }

        internal Task<NpcRequest> Completion(CancellationToken token, Action<object> onCancel)
        {
            if (completion == null)
            {
                completion = new TaskCompletionSource<NpcRequest>();
                if (Status != RequestStatus.Pending)
                    Complete();
            }
            if (token.CanBeCanceled && Status == RequestStatus.Pending)
                registration = token.Register(onCancel, this);
            return completion.Task;
        }

        internal void AddToken(string chunk)
        {
            if (streamed == null)
                streamed = new StringBuilder();
            streamed.Append(chunk);
            streamedTokens++;
            var handler = Token;
            if (handler != null)
                handler(this, chunk);
        }

        internal void AddSentence(string sentence)
        {
            if (sentences == null)
                sentences = new List<string>();
            sentences.Add(sentence);
            var handler = Sentence;
            if (handler != null)
                handler(this, sentence);
        }

        internal void AddStep(IDictionary<string, object> step)
        {
            if (steps == null)
                steps = new List<IDictionary<string, object>>();
            steps.Add(step);
            var handler = Step;
            if (handler != null)
                handler(this, step);
        }

        internal void SetAction(NpcAction action)
        {
            Action = action;
        }

        internal void Succeed(Reply reply)
        {
            Value = reply.Value;
            Text = reply.Text;
            Tokens = reply.Tokens;
            FinishReason = reply.FinishReason;
            TimedOut = reply.TimedOut;
            UsedFallback = reply.UsedFallback;
            Probs = reply.Probs;
            Fields = reply.Extra;
            object results;
            if (reply.Extra != null && reply.Extra.TryGetValue("results", out results))
                Results = results as IDictionary<string, object>;
            End(RequestStatus.Done);
        }

        internal void Fail(string code, string message)
        {
            ErrorCode = code;
            ErrorMessage = message;
            End(RequestStatus.Error);
        }

        internal void Cancel()
        {
            End(RequestStatus.Cancelled);
        }

        /// <summary>The bridge's own deadline answer, shaped like the sidecar's (docs/PROTOCOL.md, "Deadlines").</summary>
        internal void TimeOut()
        {
            TimedOut = true;
            FinishReason = "deadline";
            UseFallback();
        }

        /// <summary>The sidecar is gone: the fallback if there is one, else an error; a cancel in progress wins.</summary>
        internal void Abandon(string reason)
        {
            if (CancelRequested)
            {
                Cancel();
                return;
            }
            if (!HasFallback)
            {
                Fail("unavailable", reason);
                return;
            }
            ErrorCode = "unavailable";
            ErrorMessage = reason;
            FinishReason = "unavailable";
            UseFallback();
        }

        void UseFallback()
        {
            UsedFallback = true;
            Value = FallbackValue;
            Text = StreamedText;
            Tokens = streamedTokens;
            End(RequestStatus.Done);
        }

        void End(RequestStatus status)
        {
            if (Status != RequestStatus.Pending)
                return;
            Status = status;
            registration.Dispose();
            try
            {
                var handler = status == RequestStatus.Done ? Done : status == RequestStatus.Error ? Error : Cancelled;
                if (handler != null)
                    handler(this);
            }
            finally
            {
                // A throwing handler must not leave an awaiting task hanging.
                if (completion != null)
                    Complete();
            }
        }

        void Complete()
        {
            if (Status == RequestStatus.Done)
                completion.TrySetResult(this);
            else if (Status == RequestStatus.Error)
                completion.TrySetException(new NpcAiException(ErrorCode, ErrorMessage, this));
            else
                completion.TrySetCanceled();
        }
    }
}
