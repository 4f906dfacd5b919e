using System;
using System.Threading;
using NpcAi;
using NpcAi.Unity;
using UnityEngine;

/// <summary>
/// A blacksmith who talks (streamed, interruptible, with a deadline) and decides (awaited).
/// Put an NpcAiBehaviour in the scene, add this component, drag the NpcAiBehaviour onto it,
/// press Play and use the buttons. Uses only the package's public API.
/// </summary>
public sealed class NpcDialogueExample : MonoBehaviour
{
    [SerializeField] NpcAiBehaviour npcAi = null;
    [SerializeField] string npc = "brom";
    [SerializeField, TextArea] string persona = "You are Brom, a gruff but kind blacksmith in a mountain village.";

    readonly CancellationTokenSource destroyed = new CancellationTokenSource();
    NpcRequest talking;
    string line = "";
    string decision = "";

    void Start()
    {
        // A relaunched sidecar starts empty, so define the NPC on every connection.
        npcAi.Client.Connected += DefineNpc;
        if (npcAi.Client.State == ClientState.Ready)
            DefineNpc(npcAi.Client);
    }

    void OnDestroy()
    {
        npcAi.Client.Connected -= DefineNpc;
        destroyed.Cancel();  // cancels the awaited decision, if one is running
    }

    void DefineNpc(NpcAiClient client)
    {
        client.DefineNpc(npc, persona);
    }

    void Talk(string playerLine)
    {
        if (talking != null)
            npcAi.Client.Cancel(talking);  // the player interrupted: stop the old line
        line = "";
        talking = npcAi.Client.Say(npc, playerLine,
            new SayOptions { MaxTokens = 48, DeadlineMs = 3000, Fallback = "Hmph. Busy." });
        talking.Token += OnToken;
        talking.Done += OnLineDone;
        talking.Error += OnLineError;
    }

    void OnToken(NpcRequest request, string chunk)
    {
        if (request == talking)
            line += chunk;
    }

    void OnLineDone(NpcRequest request)
    {
        if (request == talking && request.UsedFallback)
            line = (string)request.Value;  // deadline passed or sidecar gone: the fallback line
    }

    void OnLineError(NpcRequest request)
    {
        if (request == talking)
            line = "(" + request.ErrorCode + ")";
    }

    async void Decide()
    {
        decision = "...";
        try
        {
            var result = await npcAi.Client.DecideAsync("A band of goblins blocks the road.",
                new[] { "fight", "flee", "talk" },
                new DecideOptions { Npc = npc, DeadlineMs = 500, Fallback = "flee" },
                destroyed.Token);
            decision = result.Value + (result.UsedFallback ? " (fallback)" : "");
        }
        catch (OperationCanceledException)
        {
            // Destroyed while deciding.
        }
        catch (NpcAiException e)
        {
            decision = "error: " + e.Code;
        }
    }

    void OnGUI()
    {
        GUILayout.Label("npcai: " + npcAi.Client.State);
        if (GUILayout.Button("Say good morning"))
            Talk("Good morning! Any work for me today?");
        if (GUILayout.Button("Ask about the forge (interrupts)"))
            Talk("Tell me the history of your forge.");
        if (GUILayout.Button("Goblins! Decide"))
            Decide();
        GUILayout.Label(npc + ": " + line);
        GUILayout.Label("decision: " + decision);
    }
}
