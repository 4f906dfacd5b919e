using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;

namespace NpcAi.Tests
{
    /// <summary>The msgpack codec and the protocol messages, against every msgpack.* and message.* vector.</summary>
    public static class CodecTests
    {
        public static IEnumerable<TestCase> Cases()
        {
            yield return new TestCase("unit", "codec.msgpack_vectors", MsgPackVectors);
            yield return new TestCase("unit", "codec.message_vectors", MessageVectors);
            yield return new TestCase("unit", "codec.request_encoder_vectors", RequestEncoderVectors);
            yield return new TestCase("unit", "codec.reply_vectors", ReplyVectors);
            yield return new TestCase("unit", "codec.reply_ok_allocates_nothing", ReplyOkAllocatesNothing);
            yield return new TestCase("unit", "codec.rejects_garbage", RejectsGarbage);
            yield return new TestCase("unit", "codec.rejects_deep_nesting", RejectsDeepNesting);
            yield return new TestCase("unit", "codec.rejects_oversized_containers", RejectsOversizedContainers);
            yield return new TestCase("unit", "codec.fuzz_only_msgpack_exceptions", FuzzOnlyMsgPackExceptions);
        }

        // Every msgpack.* vector: encoding the value gives exactly the bytes; decoding the bytes gives the value.
        static void MsgPackVectors()
        {
            int seen = 0;
            foreach (var v in Vectors.All())
            {
                if (!v.Key.StartsWith("msgpack.", StringComparison.Ordinal))
                    continue;
                if (v.Key.StartsWith("msgpack.refused.", StringComparison.Ordinal))
                {
                    var e = Check.Throws<MsgPackException>(() => MsgPack.Decode(v.Value), v.Key);
                    Check.True(e.Message.Contains("UTF-8"), v.Key + " says why: " + e.Message);
                    continue;
                }
                RoundTrip(v.Key, v.Value, ExpectedValue(v.Key));
                seen++;
            }
            Check.True(seen >= 40, "expected at least 40 msgpack vectors, found " + seen);
        }

        static void MessageVectors()
        {
            int seen = 0;
            foreach (var v in Vectors.All())
            {
                if (!v.Key.StartsWith("message.", StringComparison.Ordinal))
                    continue;
                RoundTrip(v.Key, v.Value, ExpectedMessage(v.Key));
                seen++;
            }
            Check.True(seen >= 14, "expected at least 14 message vectors, found " + seen);
        }

        // The bridge's own request path (not just the generic codec) must produce the vector bytes.
        static void RequestEncoderVectors()
        {
            var e = new RequestEncoder();
            Check.Bytes(Vectors.Get("message.request.hello"), e.Hello(1, "godot", null).ToArray(), "hello");
            Check.Bytes(Vectors.Get("message.request.ping"), e.Op(2, "ping", null, null).ToArray(), "ping");
            Check.Bytes(Vectors.Get("message.request.npc"), e.Npc(3, "brom", "You are Brom.", null, 7).ToArray(), "npc");
            var say = new SayOptions { MaxTokens = 32, Temperature = 0.7, DeadlineMs = 2000, Fallback = "..." };
            Check.Bytes(Vectors.Get("message.request.say"), e.Say(4, "brom", "Hello!", say).ToArray(), "say");
            var decide = new DecideOptions { Npc = "grik", DeadlineMs = 150, Fallback = "flee" };
            Check.Bytes(Vectors.Get("message.request.decide.choices"),
                e.Decide(5, "A sword!", new[] { "attack", "flee" }, null, null, decide).ToArray(), "decide.choices");
            Check.Bytes(Vectors.Get("message.request.decide.schema"),
                e.Decide(6, "Night.", null, Schema(), null, null).ToArray(), "decide.schema");
            Check.Bytes(Vectors.Get("message.request.cancel"), e.Cancel(7, 4).ToArray(), "cancel");
            var give = Map("type", "object", "properties", Map("item", Map("enum", new object[] { "sword", "shield" })));
            Check.Bytes(Vectors.Get("message.request.npc.actions"),
                e.Npc(8, "brom", "You are Brom.", null, null, new[] { new ActionSpec("give", null, give) }).ToArray(),
                "npc.actions");
            Check.Bytes(Vectors.Get("message.request.say.actions"),
                e.Say(9, "brom", "A shield!", new SayOptions { AllActions = true }).ToArray(), "say.actions");
            var steps = new object[]
            {
                Map("op", "decide", "as", "mood", "situation", "Rain.", "choices", new[] { "calm", "angry" }),
                Map("op", "say", "as", "line", "npc", "brom", "text", "({mood})"),
            };
            Check.Bytes(Vectors.Get("message.request.chain"),
                e.Chain(10, steps, new RequestOptions { DeadlineMs = 1500 }).ToArray(), "chain");
            var wait = new DecideOptions { DeadlineMs = 500, Fallback = Map("name", "wait", "args", Map()) };
            Check.Bytes(Vectors.Get("message.request.decide.actions"),
                e.DecideAction(11, "brom", "20 gold.", new[] { "give" }, wait).ToArray(), "decide.actions");
            Check.Bytes(Vectors.Get("message.request.act_result"),
                e.ActResult(12, "brom", "give", "The customer has the shield.").ToArray(), "act_result");
        }

        static void ReplyVectors()
        {
            var r = Parse("message.reply.ok");
            Check.Equal(ReplyEvent.Ok, r.Event, "ok event");
            Check.Equal(2L, r.Id, "ok id");
            Check.True(r.Extra == null, "ok has no extra fields");

            r = Parse("message.reply.token");
            Check.Equal(ReplyEvent.Token, r.Event, "token event");
            Check.Equal(" Aye", r.Text, "token text");

            r = Parse("message.reply.done.say");
            Check.Equal(ReplyEvent.Done, r.Event, "done event");
            Check.Equal("Aye.", r.Text, "done text");
            Check.Equal<object>("Aye.", r.Value, "done value");
            Check.Equal(3, r.Tokens, "done tokens");
            Check.Equal("stop", r.FinishReason, "finish_reason");
            Check.True(!r.TimedOut && !r.UsedFallback, "not timed out, no fallback");
            var timing = (IDictionary<string, object>)r.Extra["timing"];
            Check.Equal<object>(40.25, timing["prefill_ms"], "timing.prefill_ms");

            r = Parse("message.reply.done.choices");
            Check.Equal<object>("flee", r.Value, "choice");
            Check.Equal(0.25, r.Probs["attack"], "probs.attack");
            Check.Equal(0.75, r.Probs["flee"], "probs.flee");

            r = Parse("message.reply.done.timed_out");
            Check.True(r.TimedOut && r.UsedFallback, "timed out with fallback");
            Check.Equal("deadline", r.FinishReason, "finish_reason");
            Check.Equal<object>("flee", r.Value, "fallback value");

            r = Parse("message.reply.error");
            Check.Equal(ReplyEvent.Error, r.Event, "error event");
            Check.True(!r.HasId, "error about an unreadable frame has a nil id");
            Check.Equal("bad_request", r.Code, "code");
            Check.Equal("frame is not msgpack", r.Message, "message");

            r = Parse("message.reply.sentence");
            Check.Equal(ReplyEvent.Sentence, r.Event, "sentence event");
            Check.Equal(" Aye.", r.Text, "sentence text");

            r = Parse("message.reply.step");
            Check.Equal(ReplyEvent.Step, r.Event, "step event");
            var step = r.ToDictionary();
            Check.Equal<object>(0L, step["step"], "step index");
            Check.Equal<object>("mood", step["as"], "step as");
            Check.Equal<object>("calm", step["value"], "step value");

            r = Parse("message.reply.done.decide.actions");
            var action = (IDictionary<string, object>)r.Value;
            Check.Equal<object>("give", action["name"], "action name");
            Check.Equal<object>("shield", ((IDictionary<string, object>)action["args"])["item"], "action args");
            Check.Equal(1.0, r.Probs["give"], "action probs");

            r = Parse("message.reply.done.chain");
            Check.Equal<object>("Aye.", ((IDictionary<string, object>)r.Extra["results"])["line"], "chain results");

            r = Parse("message.reply.cancelled");
            Check.Equal(ReplyEvent.Cancelled, r.Event, "cancelled event");
            Check.Equal(4L, r.Id, "cancelled id");
        }

        // The per-frame promise: a bare ok (a ping's answer) is matched and decoded in place.
        static void ReplyOkAllocatesNothing()
        {
            byte[] frame = Vectors.Get("message.reply.ok");
            var reader = new MsgPackReader();
            var reply = new Reply();
            for (int i = 0; i < 100; i++)
            {
                reader.Reset(frame, 0, frame.Length);
                reply.Read(reader);
            }
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 10000; i++)
            {
                reader.Reset(frame, 0, frame.Length);
                reply.Read(reader);
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Check.Equal(0L, allocated, "bytes allocated decoding 10000 ok replies");
        }

        static void RejectsGarbage()
        {
            var garbage = new[]
            {
                new byte[] { 0xc1 },                            // never used
                new byte[] { 0xd4, 0x01, 0x02 },                // fixext 1: ext types are rejected
                new byte[] { 0xc7, 0x01, 0x05, 0x00 },          // ext 8
                new byte[] { 0xa5, 0x68 },                      // str of 5 with 1 byte
                new byte[] { 0x92, 0x01 },                      // array of 2 with 1 item
                new byte[] { 0xcb, 0x3f, 0xb9 },                // truncated float64
                new byte[] { 0x81, 0x01, 0x01 },                // map with an int key
                new byte[] { 0x01, 0x02 },                      // trailing bytes
                new byte[] { 0xa1, 0xff },                      // invalid UTF-8
                new byte[0],                                    // nothing
            };
            foreach (var bytes in garbage)
                Check.Throws<MsgPackException>(() => MsgPack.Decode(bytes), "decoding " + Check.Hex(bytes));
        }

        static void RejectsDeepNesting()
        {
            // The sidecar's rule: a top-level value is at depth 1; 31 arrays around a scalar reach 32.
            Check.True(MsgPack.Decode(Nested(31)) is object[], "31 arrays around an int decode");
            var e = Check.Throws<MsgPackException>(() => MsgPack.Decode(Nested(32)), "32 arrays around an int");
            Check.True(e.Message.Contains("nesting"), "says why: " + e.Message);
            // Far deeper than any stack allows: must fail on the limit, not overflow.
            Check.Throws<MsgPackException>(() => MsgPack.Decode(Nested(200000)), "200000 nested arrays");
            var skipping = new MsgPackReader();
            byte[] deep = Nested(200000);
            skipping.Reset(deep, 0, deep.Length);
            Check.Throws<MsgPackException>(() => skipping.Skip(1), "skipping 200000 nested arrays");
        }

        static void RejectsOversizedContainers()
        {
            // Lengths beyond the data, and beyond the limits, fail before anything is allocated.
            Check.Throws<MsgPackException>(() => MsgPack.Decode(new byte[] { 0xdd, 0xff, 0xff, 0xff, 0xff }), "array32 of 4G");
            Check.Throws<MsgPackException>(() => MsgPack.Decode(new byte[] { 0xdf, 0x7f, 0xff, 0xff, 0xff }), "map32 of 2G");
            Check.Throws<MsgPackException>(() => MsgPack.Decode(new byte[] { 0xdb, 0x7f, 0xff, 0xff, 0xff, 0x61 }), "str32 of 2G");
            Check.Throws<MsgPackException>(() => MsgPack.Decode(new byte[] { 0xc6, 0xff, 0xff, 0xff, 0xff }), "bin32 of 4G");
            var big = new MsgPackWriter();
            big.WriteArrayHeader(5000);
            for (int i = 0; i < 5000; i++)
                big.WriteNil();
            var e = Check.Throws<MsgPackException>(() => MsgPack.Decode(big.Buffer.ToArray()), "array of 5000 > 4096");
            Check.True(e.Message.Contains("4096"), "names the limit: " + e.Message);
            var small = new MsgPackReader(32, 4096, 16);
            byte[] str = MsgPack.Encode(new string('x', 17));
            Check.Throws<MsgPackException>(() => MsgPack.Decode(str, 0, str.Length, small), "string over MaxBytesLength");
        }

        // Random and mutated input may be rejected, but only ever with MsgPackException.
        static void FuzzOnlyMsgPackExceptions()
        {
            var random = new Random(1234);
            var seeds = new List<byte[]>();
            foreach (var v in Vectors.All())
                if (v.Value.Length < 4096)
                    seeds.Add(v.Value);
            var reply = new Reply();
            var reader = new MsgPackReader();
            for (int i = 0; i < 20000; i++)
            {
                byte[] bytes;
                if (i % 2 == 0)
                {
                    bytes = new byte[random.Next(0, 24)];
                    random.NextBytes(bytes);
                }
                else
                {
                    bytes = (byte[])seeds[random.Next(seeds.Count)].Clone();
                    for (int flips = random.Next(1, 4); flips > 0 && bytes.Length > 0; flips--)
                        bytes[random.Next(bytes.Length)] = (byte)random.Next(256);
                }
                try
                {
                    MsgPack.Decode(bytes);
                }
                catch (MsgPackException)
                {
                }
                try
                {
                    reader.Reset(bytes, 0, bytes.Length);
                    reply.Read(reader);
                }
                catch (MsgPackException)
                {
                }
            }
        }

        static void RoundTrip(string name, byte[] bytes, object expected)
        {
            Check.Bytes(bytes, MsgPack.Encode(expected), name + " encodes");
            object decoded = MsgPack.Decode(bytes);
            string difference = Difference(expected, decoded, "");
            if (difference != null)
                throw new TestFailure(name + " decodes: " + difference);
        }

        static Reply Parse(string vector)
        {
            byte[] frame = Vectors.Get(vector);
            var reader = new MsgPackReader();
            reader.Reset(frame, 0, frame.Length);
            var reply = new Reply();
            reply.Read(reader);
            return reply;
        }

        static byte[] Nested(int arrays)
        {
            var bytes = new byte[arrays + 1];
            for (int i = 0; i < arrays; i++)
                bytes[i] = 0x91;
            bytes[arrays] = 0x01;
            return bytes;
        }

        // The value each vector's description stands for, built by name (generate.py's cases).
        static object ExpectedValue(string name)
        {
            string key = name.Substring("msgpack.".Length);
            if (key.StartsWith("uint.", StringComparison.Ordinal))
            {
                ulong u = ulong.Parse(key.Substring(5), CultureInfo.InvariantCulture);
                return u > long.MaxValue ? (object)u : (long)u;
            }
            if (key.StartsWith("int.", StringComparison.Ordinal))
                return long.Parse(key.Substring(4), CultureInfo.InvariantCulture);
            switch (key)
            {
                case "nil": return null;
                case "true": return true;
                case "false": return false;
                case "float32.1.5": return 1.5f;
                case "float32.-0.25": return -0.25f;
                case "float64.0.1": return 0.1;
                case "float64.-1e300": return -1e300;
                case "str.empty": return "";
                case "str.hello": return "hello";
                case "str.31": return new string('a', 31);
                case "str.32": return new string('a', 32);
                case "str.255": return new string('d', 255);
                case "str.256": return new string('b', 256);
                case "str.65536": return new string('c', 65536);
                case "str.utf8": return "h\u00e9llo \u2713";
                case "str.nul": return "a\0b";
                case "bin.empty": return new byte[0];
                case "bin.3": return new byte[] { 0x00, 0x01, 0xff };
                case "bin.255": return new byte[255];
                case "bin.256": return Range(256);
                case "bin.65536": return new byte[65536];
                case "array.empty": return new object[0];
                case "array.mixed": return new object[] { 1L, "a", null, true };
                case "array.16":
                {
                    var items = new object[16];
                    for (int i = 0; i < 16; i++)
                        items[i] = (long)i;
                    return items;
                }
                case "map.empty": return new Dictionary<string, object>();
                case "map.one": return Map("a", 1L);
                case "map.16":
                {
                    var map = new Dictionary<string, object>();
                    for (int i = 0; i < 16; i++)
                        map["k" + i.ToString("00")] = (long)i;
                    return map;
                }
                case "nested": return Map("a", new object[] { 1L, Map("b", new object[] { null, 2.5 }) });
            }
            throw new TestFailure("no expected value for vector " + name + ": add it to CodecTests");
        }

        static object ExpectedMessage(string name)
        {
            switch (name.Substring("message.".Length))
            {
                case "request.hello": return Map("v", 1L, "id", 1L, "op", "hello", "client", "godot");
                case "request.ping": return Map("v", 1L, "id", 2L, "op", "ping");
                case "request.npc":
                    return Map("v", 1L, "id", 3L, "op", "npc", "npc", "brom", "persona", "You are Brom.", "seed", 7L);
                case "request.say":
                    return Map("v", 1L, "id", 4L, "op", "say", "npc", "brom", "text", "Hello!", "max_tokens", 32L,
                        "temperature", 0.7, "deadline_ms", 2000L, "fallback", "...");
                case "request.decide.choices":
                    return Map("v", 1L, "id", 5L, "op", "decide", "npc", "grik", "situation", "A sword!",
                        "choices", new object[] { "attack", "flee" }, "deadline_ms", 150L, "fallback", "flee");
                case "request.decide.schema":
                    return Map("v", 1L, "id", 6L, "op", "decide", "situation", "Night.", "schema", Schema());
                case "request.cancel": return Map("v", 1L, "id", 7L, "op", "cancel", "target", 4L);
                case "request.npc.actions":
                    return Map("v", 1L, "id", 8L, "op", "npc", "npc", "brom", "persona", "You are Brom.",
                        "actions", new object[] { Map("name", "give", "args", Map("type", "object", "properties",
                            Map("item", Map("enum", new object[] { "sword", "shield" })))) });
                case "request.say.actions":
                    return Map("v", 1L, "id", 9L, "op", "say", "npc", "brom", "text", "A shield!", "actions", true);
                case "request.chain":
                    return Map("v", 1L, "id", 10L, "op", "chain", "steps", new object[] {
                        Map("op", "decide", "as", "mood", "situation", "Rain.", "choices", new object[] { "calm", "angry" }),
                        Map("op", "say", "as", "line", "npc", "brom", "text", "({mood})") }, "deadline_ms", 1500L);
                case "request.decide.actions":
                    return Map("v", 1L, "id", 11L, "op", "decide", "npc", "brom", "situation", "20 gold.",
                        "actions", new object[] { "give" }, "deadline_ms", 500L,
                        "fallback", Map("name", "wait", "args", Map()));
                case "request.act_result":
                    return Map("v", 1L, "id", 12L, "op", "act_result", "npc", "brom", "name", "give",
                        "result", "The customer has the shield.");
                case "reply.done.decide.actions":
                    return Map("v", 1L, "id", 11L, "event", "done", "value", Map("name", "give", "args",
                        Map("item", "shield")), "probs", Map("give", 1.0));
                case "reply.step.token":
                    return Map("v", 1L, "id", 10L, "event", "token", "text", " Aye", "step", 1L);
                case "reply.sentence": return Map("v", 1L, "id", 9L, "event", "sentence", "text", " Aye.");
                case "reply.step":
                    return Map("v", 1L, "id", 10L, "event", "step", "step", 0L, "as", "mood", "value", "calm",
                        "used_fallback", false);
                case "reply.done.action":
                    return Map("v", 1L, "id", 9L, "event", "done", "text", "Aye.", "value", "Aye.",
                        "action", Map("name", "give", "args", Map("item", "shield")));
                case "reply.done.chain":
                    return Map("v", 1L, "id", 10L, "event", "done", "value", Map("mood", "calm", "line", "Aye."),
                        "results", Map("mood", "calm", "line", "Aye."));
                case "reply.ok": return Map("v", 1L, "id", 2L, "event", "ok");
                case "reply.token": return Map("v", 1L, "id", 4L, "event", "token", "text", " Aye");
                case "reply.done.say":
                    return Map("v", 1L, "id", 4L, "event", "done", "text", "Aye.", "value", "Aye.", "tokens", 3L,
                        "finish_reason", "stop", "timed_out", false, "used_fallback", false,
                        "timing", Map("queue_ms", 0.5, "prefill_ms", 40.25, "ttft_ms", 41.0, "total_ms", 60.5));
                case "reply.done.choices":
                    return Map("v", 1L, "id", 5L, "event", "done", "value", "flee", "text", "flee",
                        "probs", Map("attack", 0.25, "flee", 0.75));
                case "reply.done.timed_out":
                    return Map("v", 1L, "id", 5L, "event", "done", "value", "flee", "text", "", "tokens", 0L,
                        "timed_out", true, "used_fallback", true, "finish_reason", "deadline",
                        "timing", Map("queue_ms", 0.5, "total_ms", 150.25));
                case "reply.error":
                    return Map("v", 1L, "id", null, "event", "error", "code", "bad_request",
                        "message", "frame is not msgpack");
                case "reply.cancelled": return Map("v", 1L, "id", 4L, "event", "cancelled");
                case "reply.local.unavailable":
                    return Map("v", 1L, "id", 4L, "event", "error", "code", "unavailable",
                        "message", "the sidecar is gone", "local", true);
                case "reply.local.fallback":
                    return Map("v", 1L, "id", 5L, "event", "done", "value", "flee", "text", "", "timed_out", false,
                        "used_fallback", true, "finish_reason", "unavailable", "local", true);
            }
            throw new TestFailure("no expected value for vector " + name + ": add it to CodecTests");
        }

        static Dictionary<string, object> Schema()
        {
            return Map("type", "object",
                "properties", Map("act", Map("enum", new object[] { "a", "b" })),
                "required", new object[] { "act" });
        }

        // Keys in insertion order, which is the order a Dictionary enumerates them in when nothing is removed.
        static Dictionary<string, object> Map(params object[] pairs)
        {
            var map = new Dictionary<string, object>();
            for (int i = 0; i < pairs.Length; i += 2)
                map.Add((string)pairs[i], pairs[i + 1]);
            return map;
        }

        static byte[] Range(int count)
        {
            var bytes = new byte[count];
            for (int i = 0; i < count; i++)
                bytes[i] = (byte)i;
            return bytes;
        }

        // Null when equal (types included: float32 stays float, ints are long or ulong); else where they differ.
        static string Difference(object expected, object actual, string path)
        {
            if (expected == null || actual == null)
                return expected == actual ? null : path + ": expected " + (expected ?? "nil") + ", got " + (actual ?? "nil");
            if (expected.GetType() != actual.GetType())
                return path + ": expected a " + expected.GetType().Name + ", got a " + actual.GetType().Name;
            var bytes = expected as byte[];
            if (bytes != null)
                return Check.Hex(bytes) == Check.Hex((byte[])actual) ? null : path + ": bytes differ";
            var map = expected as IDictionary<string, object>;
            if (map != null)
            {
                var other = (IDictionary<string, object>)actual;
                if (map.Count != other.Count)
                    return path + ": " + map.Count + " keys expected, got " + other.Count;
                foreach (var entry in map)
                {
                    object value;
                    if (!other.TryGetValue(entry.Key, out value))
                        return path + ": key " + entry.Key + " missing";
                    string d = Difference(entry.Value, value, path + "." + entry.Key);
                    if (d != null)
                        return d;
                }
                return null;
            }
            var list = expected as IList;
            if (list != null)
            {
                var other = (IList)actual;
                if (list.Count != other.Count)
                    return path + ": " + list.Count + " items expected, got " + other.Count;
                for (int i = 0; i < list.Count; i++)
                {
                    string d = Difference(list[i], other[i], path + "[" + i + "]");
                    if (d != null)
                        return d;
                }
                return null;
            }
            return expected.Equals(actual) ? null : path + ": expected " + expected + ", got " + actual;
        }
    }
}
