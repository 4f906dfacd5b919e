namespace NpcAi
{
    /// <summary>Envelope fields every request may carry (docs/PROTOCOL.md, "Requests").</summary>
    public class RequestOptions
    {
        object fallback;

        /// <summary>
        /// The answer is due this many ms after the request is made. The sidecar answers with the
        /// fallback when it passes; so does the bridge itself, from Poll(), if the sidecar is silent.
        /// </summary>
        public int? DeadlineMs { get; set; }

        /// <summary>Higher is served first (sidecar default 0).</summary>
        public int? Priority { get; set; }

        /// <summary>
        /// The value used when no real answer can be given (deadline passed, decision failed,
        /// sidecar gone). Setting it, even to null, sends it; a null fallback is a valid answer.
        /// </summary>
        public object Fallback
        {
            get { return fallback; }
            set { fallback = value; HasFallback = true; }
        }

        public bool HasFallback { get; private set; }

        public void ClearFallback()
        {
            fallback = null;
            HasFallback = false;
        }
    }

    /// <summary>Sampling fields shared by say and decide; null leaves the sidecar's default.</summary>
    public class GenerationOptions : RequestOptions
    {
        public int? MaxTokens { get; set; }
        public double? Temperature { get; set; }
        public int? TopK { get; set; }
        public double? TopP { get; set; }
        public long? Seed { get; set; }
        /// <summary>Which loaded model answers (e.g. "dialogue", "decision").</summary>
        public string Role { get; set; }
    }

    public sealed class SayOptions : GenerationOptions
    {
        /// <summary>Stream token chunks (sidecar default true).</summary>
        public bool? Stream { get; set; }
        /// <summary>Stop sequences.</summary>
        public string[] Stop { get; set; }
        /// <summary>After the line the NPC may act: any of its declared actions (done.action, NpcAiClient.ActionRequested).</summary>
        public bool AllActions { get; set; }
        /// <summary>After the line the NPC may act, among these of its actions only (this turn); ignored when AllActions.</summary>
        public string[] Actions { get; set; }
    }

    public sealed class DecideOptions : GenerationOptions
    {
        /// <summary>Decide as this NPC (its persona and history); null decides without one.</summary>
        public string Npc { get; set; }
        /// <summary>With choices or actions: the words the answer starts with, which each option completes.</summary>
        public string Lead { get; set; }
    }
}
