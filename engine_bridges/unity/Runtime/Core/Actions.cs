using System;
using System.Collections;
using System.Collections.Generic;

namespace NpcAi
{
    /// <summary>
    /// One thing an NPC may do, declared with <see cref="NpcAiClient.DefineNpc(string, string, IList{ActionSpec}, string, long?)"/>
    /// (docs/PROTOCOL.md, "Actions"): its name, the words that describe it ("give the customer what they
    /// paid for"; null: the name is used), and a JSON schema of its arguments as nested
    /// IDictionary/IList values (typically enums of in-game ids; null: it takes none).
    /// </summary>
    public sealed class ActionSpec
    {
        public ActionSpec(string name, string description = null, IDictionary args = null)
        {
            if (name == null)
                throw new ArgumentNullException("name");
            Name = name;
            Description = description;
            Args = args;
        }

        public string Name { get; private set; }
        public string Description { get; private set; }
        public IDictionary Args { get; private set; }

        /// <summary>The action as the protocol's map: name, then description and args when set.</summary>
        public IDictionary ToMap()
        {
            var map = new Dictionary<string, object> { { "name", Name } };
            if (Description != null)
                map["description"] = Description;
            if (Args != null)
                map["args"] = Args;
            return map;
        }
    }

    /// <summary>An action an NPC chose: one it declared, with arguments valid against that action's schema.</summary>
    public sealed class NpcAction
    {
        static readonly IReadOnlyDictionary<string, object> NoArgs = new Dictionary<string, object>();

        NpcAction(string npc, string name, IReadOnlyDictionary<string, object> args)
        {
            Npc = npc;
            Name = name;
            Args = args;
        }

        /// <summary>The NPC that acts (the request's npc, or the chain step's).</summary>
        public string Npc { get; private set; }
        public string Name { get; private set; }
        /// <summary>The arguments, decoded: string, long, double, bool, nested maps and object[] lists.</summary>
        public IReadOnlyDictionary<string, object> Args { get; private set; }

        public override string ToString()
        {
            return Npc + ": " + Name + "(" + string.Join(", ", Describe(Args)) + ")";
        }

        /// <summary>
        /// The action <paramref name="answer"/> carries as the reply to <paramref name="asked"/> (a say or
        /// decide request's, or a chain step's: op, npc, actions), or null: a say's done.action (null when the
        /// NPC just talks), a decide-with-actions' value; never a fallback, which the game chose itself.
        /// </summary>
        internal static NpcAction From(string op, string npc, bool actionsAsked, IDictionary<string, object> answer,
                                       bool usedFallback)
        {
            if (!actionsAsked || usedFallback || answer == null)
                return null;
            object found;
            if (op == "say")
                answer.TryGetValue("action", out found);
            else if (op == "decide")
                answer.TryGetValue("value", out found);
            else
                return null;
            var map = found as IDictionary<string, object>;
            object name, args;
            if (map == null || !map.TryGetValue("name", out name) || !(name is string))
                return null;
            map.TryGetValue("args", out args);
            var argMap = args as Dictionary<string, object>;
            if (args != null && argMap == null)
                return null;
            return new NpcAction(npc, (string)name, argMap ?? NoArgs);
        }

        /// <summary>Whether a request's or step's "actions" field asks for actions: true, or a list of names.</summary>
        internal static bool Asked(object actions)
        {
            return actions is bool ? (bool)actions : actions is IList;
        }

        static IEnumerable<string> Describe(IReadOnlyDictionary<string, object> args)
        {
            foreach (var entry in args)
                yield return entry.Key + "=" + entry.Value;
        }
    }
}
