using System.Collections.Generic;
using System.Text;

namespace NpcAi
{
    public enum ReplyEvent { Unknown, Ok, Token, Done, Error, Cancelled, Sentence, Step }

    /// <summary>
    /// One decoded reply (docs/PROTOCOL.md, "Replies"). A single instance is reused for every
    /// frame: keys are matched as raw bytes, so an "ok" without payload, such as a ping's,
    /// decodes without allocating. Fields the bridge does not model land in <see cref="Extra"/>.
    /// </summary>
    public sealed class Reply
    {
        static readonly byte[] KeyV = Ascii("v"), KeyId = Ascii("id"), KeyEvent = Ascii("event"),
            KeyText = Ascii("text"), KeyValue = Ascii("value"), KeyTokens = Ascii("tokens"),
            KeyFinish = Ascii("finish_reason"), KeyTimedOut = Ascii("timed_out"),
            KeyUsedFallback = Ascii("used_fallback"), KeyProbs = Ascii("probs"), KeyCode = Ascii("code"),
            KeyMessage = Ascii("message"), KeyBackoffLevel = Ascii("backoff_level");

        static readonly byte[] EventOk = Ascii("ok"), EventToken = Ascii("token"), EventDone = Ascii("done"),
            EventError = Ascii("error"), EventCancelled = Ascii("cancelled"), EventSentence = Ascii("sentence"),
            EventStep = Ascii("step");

        // finish_reason values the sidecar sends, kept as constants so matching them allocates nothing.
        static readonly string[] FinishReasons = { "stop", "sentence", "length", "deadline", "error" };
        static readonly byte[][] FinishReasonBytes =
            { Ascii("stop"), Ascii("sentence"), Ascii("length"), Ascii("deadline"), Ascii("error") };

        /// <summary>False when the reply carries a nil id (an error about a frame the sidecar could not read).</summary>
        public bool HasId;
        public long Id;
        public ReplyEvent Event;
        public string Text;
        public bool HasValue;
        public object Value;
        public int Tokens;
        public string FinishReason;
        public bool TimedOut;
        public bool UsedFallback;
        public Dictionary<string, double> Probs;
        public string Code;
        public string Message;
        /// <summary>A frame reply's back-off level (0-3); -1 when the reply has none.</summary>
        public int BackoffLevel;
        /// <summary>Every other field (ok payloads, timing, forced_tokens...); a new map per reply, or null.</summary>
        public Dictionary<string, object> Extra;

        public void Clear()
        {
            HasId = false;
            Id = 0;
            Event = ReplyEvent.Unknown;
            Text = null;
            HasValue = false;
            Value = null;
            Tokens = 0;
            FinishReason = null;
            TimedOut = false;
            UsedFallback = false;
            Probs = null;
            Code = null;
            Message = null;
            BackoffLevel = -1;
            Extra = null;
        }

        /// <summary>
        /// Decodes one reply frame; throws MsgPackException if it is not a well-formed map. After a throw,
        /// HasId and Id still hold the id if it came before the bad part (the sidecar writes v and id first).
        /// </summary>
        public void Read(MsgPackReader reader)
        {
            Clear();
            byte[] d = reader.Data;
            int entries = reader.ReadMapHeader();
            for (int i = 0; i < entries; i++)
            {
                if (reader.PeekType() != MsgPackType.Str)
                    throw new MsgPackException("reply keys must be strings");
                int k, n;
                reader.ReadStringBytes(out k, out n);
                if (MsgPackReader.BytesEqual(d, k, n, KeyId))
                {
                    // Set only once read: a reply that fails later still names its request.
                    if (!reader.TryReadNil())
                    {
                        Id = reader.ReadInt64();
                        HasId = true;
                    }
                }
                else if (MsgPackReader.BytesEqual(d, k, n, KeyEvent))
                    Event = ReadEvent(reader);
                else if (MsgPackReader.BytesEqual(d, k, n, KeyV))
                    reader.Skip(2);  // always 1 in protocol v1; hello's "protocol" is the one to check
                else if (MsgPackReader.BytesEqual(d, k, n, KeyText))
                    Text = ReadOptionalString(reader);
                else if (MsgPackReader.BytesEqual(d, k, n, KeyValue))
                {
                    HasValue = true;
                    Value = reader.ReadValue(2);
                }
                else if (MsgPackReader.BytesEqual(d, k, n, KeyTokens))
                    Tokens = (int)reader.ReadInt64();
                else if (MsgPackReader.BytesEqual(d, k, n, KeyFinish))
                    FinishReason = ReadFinishReason(reader);
                else if (MsgPackReader.BytesEqual(d, k, n, KeyTimedOut))
                    TimedOut = reader.ReadBool();
                else if (MsgPackReader.BytesEqual(d, k, n, KeyUsedFallback))
                    UsedFallback = reader.ReadBool();
                else if (MsgPackReader.BytesEqual(d, k, n, KeyProbs))
                    ReadProbs(reader);
                else if (MsgPackReader.BytesEqual(d, k, n, KeyCode))
                    Code = ReadOptionalString(reader);
                else if (MsgPackReader.BytesEqual(d, k, n, KeyMessage))
                    Message = ReadOptionalString(reader);
                else if (MsgPackReader.BytesEqual(d, k, n, KeyBackoffLevel))
                    BackoffLevel = (int)reader.ReadInt64();  // frame's ok: matched here so it decodes without allocating
                else
                {
                    if (Extra == null)
                        Extra = new Dictionary<string, object>();
                    Extra[Encoding.UTF8.GetString(d, k, n)] = reader.ReadValue(2);
                }
            }
            if (reader.Remaining != 0)
                throw new MsgPackException("bytes after the reply map");
        }

        static ReplyEvent ReadEvent(MsgPackReader reader)
        {
            int at, n;
            reader.ReadStringBytes(out at, out n);
            byte[] d = reader.Data;
            if (MsgPackReader.BytesEqual(d, at, n, EventToken)) return ReplyEvent.Token;
            if (MsgPackReader.BytesEqual(d, at, n, EventOk)) return ReplyEvent.Ok;
            if (MsgPackReader.BytesEqual(d, at, n, EventDone)) return ReplyEvent.Done;
            if (MsgPackReader.BytesEqual(d, at, n, EventError)) return ReplyEvent.Error;
            if (MsgPackReader.BytesEqual(d, at, n, EventCancelled)) return ReplyEvent.Cancelled;
            if (MsgPackReader.BytesEqual(d, at, n, EventSentence)) return ReplyEvent.Sentence;
            if (MsgPackReader.BytesEqual(d, at, n, EventStep)) return ReplyEvent.Step;
            return ReplyEvent.Unknown;
        }

        static string ReadFinishReason(MsgPackReader reader)
        {
            if (reader.TryReadNil())
                return null;
            int at, n;
            reader.ReadStringBytes(out at, out n);
            for (int i = 0; i < FinishReasons.Length; i++)
                if (MsgPackReader.BytesEqual(reader.Data, at, n, FinishReasonBytes[i]))
                    return FinishReasons[i];
            return Encoding.UTF8.GetString(reader.Data, at, n);
        }

        static string ReadOptionalString(MsgPackReader reader)
        {
            return reader.TryReadNil() ? null : reader.ReadString();
        }

        // A choice's probs (option -> number) go to Probs; a chain's (step name -> that step's probs) to Extra.
        void ReadProbs(MsgPackReader reader)
        {
            var map = reader.ReadValue(2) as Dictionary<string, object>;
            if (map == null)
                throw new MsgPackException("probs must be a map");
            var probs = new Dictionary<string, double>(map.Count);
            foreach (var entry in map)
            {
                if (entry.Value is double)
                    probs[entry.Key] = (double)entry.Value;
                else if (entry.Value is float)
                    probs[entry.Key] = (float)entry.Value;
                else if (entry.Value is long)
                    probs[entry.Key] = (long)entry.Value;
                else
                {
                    if (Extra == null)
                        Extra = new Dictionary<string, object>();
                    Extra["probs"] = map;
                    return;
                }
            }
            Probs = probs;
        }

        /// <summary>The reply as one map (the modelled fields and Extra): a chain's step event, as handed to the game.</summary>
        public Dictionary<string, object> ToDictionary()
        {
            var all = Extra == null ? new Dictionary<string, object>() : new Dictionary<string, object>(Extra);
            if (HasValue)
                all["value"] = Value;
            if (Text != null)
                all["text"] = Text;
            if (FinishReason != null)
                all["finish_reason"] = FinishReason;
            all["timed_out"] = TimedOut;
            all["used_fallback"] = UsedFallback;
            if (Probs != null)
                all["probs"] = Probs;
            return all;
        }

        static byte[] Ascii(string s)
        {
            return Encoding.ASCII.GetBytes(s);
        }
    }
}
