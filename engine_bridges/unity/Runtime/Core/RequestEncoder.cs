using System.Collections;
using System.Collections.Generic;

namespace NpcAi
{
    /// <summary>
    /// Builds protocol v1 request bodies into reused buffers, fields in a fixed order:
    /// v, id, op, the op's own fields, sampling fields, deadline_ms, priority, fallback
    /// (the order of the conformance vectors). Absent (null) options are left out.
    /// The returned buffer is valid until the next call.
    /// </summary>
    public sealed class RequestEncoder
    {

        readonly MsgPackWriter entries = new MsgPackWriter(512);
        readonly MsgPackWriter message = new MsgPackWriter(512);
        int count;

        public ByteBuffer Hello(long id, string client, string token)
        {
            Begin(id, "hello");
            Str("client", client);
            Str("token", token);
            return End(null);
        }

        public ByteBuffer Npc(long id, string npc, string persona, string role, long? seed)
        {
            Begin(id, "npc");
            Str("npc", npc);
            Str("persona", persona);
            Str("role", role);
            Int("seed", seed);
            return End(null);
        }

        /// <summary>npc with actions: each one's name, description and args schema (docs/PROTOCOL.md, "Actions").</summary>
        public ByteBuffer Npc(long id, string npc, string persona, string role, long? seed, IList<ActionSpec> actions)
        {
            Begin(id, "npc");
            Str("npc", npc);
            Str("persona", persona);
            Str("role", role);
            Int("seed", seed);
            if (actions != null)
            {
                Key("actions");
                entries.WriteArrayHeader(actions.Count);
                for (int i = 0; i < actions.Count; i++)
                    entries.WriteValue(actions[i].ToMap());
            }
            return End(null);
        }

        public ByteBuffer Say(long id, string npc, string text, SayOptions options)
        {
            Begin(id, "say");
            Str("npc", npc);
            Str("text", text);
            Generation(options);
            if (options != null)
            {
                Bool("stream", options.Stream);
                if (options.Stop != null)
                {
                    Key("stop");
                    entries.WriteValue(options.Stop);
                }
                if (options.AllActions)
                    Bool("actions", true);
                else if (options.Actions != null)
                {
                    Key("actions");
                    entries.WriteValue(options.Actions);
                }
            }
            return End(options);
        }

        /// <summary>A decide with exactly one of choices, schema (a JSON schema as nested maps/lists) or grammar.</summary>
        public ByteBuffer Decide(long id, string situation, string[] choices, IDictionary schema, string grammar,
                                 DecideOptions options)
        {
            Begin(id, "decide");
            Str("npc", options == null ? null : options.Npc);
            Str("situation", situation);
            if (choices != null)
            {
                Key("choices");
                entries.WriteValue(choices);
            }
            if (schema != null)
            {
                Key("schema");
                entries.WriteValue(schema);
            }
            Str("grammar", grammar);
            Str("lead", options == null ? null : options.Lead);
            Generation(options);
            return End(options);
        }

        /// <summary>decide with actions: among <paramref name="actions"/> of the NPC's actions, or all of them when null.</summary>
        public ByteBuffer DecideAction(long id, string npc, string situation, string[] actions, DecideOptions options)
        {
            Begin(id, "decide");
            Str("npc", npc);
            Str("situation", situation);
            if (actions == null)
                Bool("actions", true);
            else
            {
                Key("actions");
                entries.WriteValue(actions);
            }
            Str("lead", options == null ? null : options.Lead);
            Generation(options);
            return End(options);
        }

        public ByteBuffer ActResult(long id, string npc, string name, string result)
        {
            Begin(id, "act_result");
            Str("npc", npc);
            Str("name", name);
            Str("result", result);
            return End(null);
        }

        /// <summary>chain: the steps as given (each a map: op, as, and that op's fields).</summary>
        public ByteBuffer Chain(long id, IList steps, RequestOptions options)
        {
            Begin(id, "chain");
            Key("steps");
            entries.WriteValue(steps);
            return End(options);
        }

        /// <summary>Ops whose only fields are strings: observe (npc, text), forget and save (npc).</summary>
        public ByteBuffer NpcOp(long id, string op, string npc, string text)
        {
            Begin(id, op);
            Str("npc", npc);
            Str("text", text);
            return End(null);
        }

        public ByteBuffer Load(long id, string npc, byte[] state)
        {
            Begin(id, "load");
            Str("npc", npc);
            Key("state");
            entries.WriteBin(state, 0, state.Length);
            return End(null);
        }

        public ByteBuffer Cancel(long id, long target)
        {
            Begin(id, "cancel");
            Int("target", target);
            return End(null);
        }

        /// <summary>budget: only the limits given (non-null) are sent; the sidecar keeps the others.</summary>
        public ByteBuffer Budget(long id, int? threads, double? tokensPerS, double? share, double? frameMs)
        {
            Begin(id, "budget");
            Int("threads", threads);
            Num("tokens_per_s", tokensPerS);
            Num("share", share);
            Num("frame_ms", frameMs);
            return End(null);
        }

        /// <summary>frame: frame_ms as an array of float64, oldest first. Allocates nothing once the buffers have grown.</summary>
        public ByteBuffer Frame(long id, double[] frameMs, int count)
        {
            Begin(id, "frame");
            Key("frame_ms");
            entries.WriteArrayHeader(count);
            for (int i = 0; i < count; i++)
                entries.WriteDouble(frameMs[i]);
            return End(null);
        }

        /// <summary>An op with no fields (ping, stats, shutdown), or any op with its fields as a map.</summary>
        public ByteBuffer Op(long id, string op, IDictionary fields, RequestOptions options)
        {
            Begin(id, op);
            if (fields != null)
            {
                var e = fields.GetEnumerator();
                while (e.MoveNext())
                {
                    Key((string)e.Key);
                    entries.WriteValue(e.Value);
                }
            }
            return End(options);
        }

        void Begin(long id, string op)
        {
            entries.Clear();
            count = 0;
            Int("v", 1);
            Int("id", id);
            Str("op", op);
        }

        void Generation(GenerationOptions options)
        {
            if (options == null)
                return;
            Int("max_tokens", options.MaxTokens);
            Num("temperature", options.Temperature);
            Int("top_k", options.TopK);
            Num("top_p", options.TopP);
            Int("seed", options.Seed);
            Str("role", options.Role);
        }

        ByteBuffer End(RequestOptions options)
        {
            if (options != null)
            {
                Int("deadline_ms", options.DeadlineMs);
                Int("priority", options.Priority);
                if (options.HasFallback)
                {
                    Key("fallback");
                    entries.WriteValue(options.Fallback);
                }
            }
            message.Clear();
            message.WriteMapHeader(count);
            message.WriteRaw(entries.Buffer);
            return message.Buffer;
        }

        void Key(string key)
        {
            count++;
            entries.WriteString(key);
        }

        void Str(string key, string value)
        {
            if (value == null)
                return;
            Key(key);
            entries.WriteString(value);
        }

        void Int(string key, long? value)
        {
            if (!value.HasValue)
                return;
            Key(key);
            entries.WriteInt(value.Value);
        }

        void Num(string key, double? value)
        {
            if (!value.HasValue)
                return;
            Key(key);
            entries.WriteDouble(value.Value);
        }

        void Bool(string key, bool? value)
        {
            if (!value.HasValue)
                return;
            Key(key);
            entries.WriteBool(value.Value);
        }
    }
}
