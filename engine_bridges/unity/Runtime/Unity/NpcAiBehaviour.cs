using System;
using System.ComponentModel;
using UnityEngine;

namespace NpcAi.Unity
{
    /// <summary>
    /// One npcai sidecar for the game: launches it (or connects to a running one) on Awake,
    /// polls it once per frame, relaunches it after a crash, and stops it when the game quits.
    /// Everything else goes through <see cref="Client"/>. The only file of the package that
    /// references UnityEngine.
    /// </summary>
    [DisallowMultipleComponent]
    public sealed class NpcAiBehaviour : MonoBehaviour
    {
        [Header("Sidecar")]
        [Tooltip("Empty: launch a sidecar. Set (tcp://127.0.0.1:PORT): connect to one that is already running.")]
        [SerializeField] string connectEndpoint = "";
        [Tooltip("Program that runs `npcai serve`: npcai, or python with command args -m npcai.")]
        [SerializeField] string command = "npcai";
        [SerializeField] string[] commandArgs = new string[0];
        [Tooltip("Extra flags for `npcai serve`, e.g. --model smollm2-135m.")]
        [SerializeField] string[] serveArgs = new string[0];
        [Tooltip("Learn the endpoint from --ready-file instead of the child's stdout.")]
        [SerializeField] bool useReadyFile;
        [Tooltip("Shared secret: passed to the sidecar with --token and sent in hello.")]
        [SerializeField] string token = "";

        [Header("Per-frame budget")]
        [SerializeField] int maxMessagesPerPoll = 64;
        [SerializeField] int pollBudgetMicros = 1000;

        [Header("Failures")]
        [Tooltip("Seconds to wait before relaunching (or reconnecting) after the sidecar is lost; 0 turns it off.")]
        [SerializeField] float relaunchDelaySeconds = 2f;
        [SerializeField] bool keepAcrossScenes = true;

        float relaunchAt = -1f;

        /// <summary>The bridge; attach to its Connected event to (re)define NPCs on every new sidecar.</summary>
        public NpcAiClient Client { get; private set; }

        void Awake()
        {
            if (keepAcrossScenes)
                DontDestroyOnLoad(gameObject);
            Client = new NpcAiClient(new NpcAiClientOptions
            {
                MaxMessagesPerPoll = maxMessagesPerPoll,
                PollBudgetMicros = pollBudgetMicros,
                Token = string.IsNullOrEmpty(token) ? null : token,
            });
            Client.Warning += OnWarning;
            Client.Disconnected += OnDisconnected;
            StartSidecar(false);
        }

        void Update()
        {
            if (relaunchAt >= 0f && Time.unscaledTime >= relaunchAt)
            {
                relaunchAt = -1f;
                StartSidecar(true);
            }
            Client.Poll();
        }

        void OnApplicationQuit()
        {
            Client.Dispose();
        }

        void OnDestroy()
        {
            if (Client != null)
                Client.Dispose();
        }

        // Not named Start: Unity would take it for its message.
        void StartSidecar(bool relaunch)
        {
            try
            {
                if (relaunch)
                    Client.Relaunch();
                else if (string.IsNullOrEmpty(connectEndpoint))
                    Client.Launch(new SidecarOptions
                    {
                        Command = command,
                        CommandArgs = commandArgs,
                        ServeArgs = serveArgs,
                        UseReadyFile = useReadyFile,
                    });
                else
                    Client.Connect(connectEndpoint);
            }
            catch (Win32Exception e)
            {
                Debug.LogError("npcai: cannot run '" + command + "' (" + e.Message + "). Install npcai (pip install npcai) "
                               + "or set the command to your Python with args -m npcai.");
            }
        }

        void OnDisconnected(NpcAiClient client, string reason)
        {
            Debug.LogWarning("npcai: sidecar lost: " + reason);
            if (relaunchDelaySeconds > 0f)
                relaunchAt = Time.unscaledTime + relaunchDelaySeconds;
        }

        static void OnWarning(NpcAiClient client, string message)
        {
            Debug.LogWarning("npcai: " + message);
        }
    }
}
