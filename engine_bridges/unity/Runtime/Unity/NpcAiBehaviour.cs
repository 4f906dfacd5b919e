using System;
using System.ComponentModel;
using System.IO;
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
        [Tooltip("Start the shipped sidecar (npcai-sidecar from `npcai bundle`) when StreamingAssets/npcai/ or PATH has one, before Command.")]
        [SerializeField] bool useSidecarBundle = true;
        [Tooltip("Program that runs `npcai serve` when no bundle is found: npcai, or python with command args -m npcai.")]
        [SerializeField] string command = "npcai";
        [SerializeField] string[] commandArgs = new string[0];
        [Tooltip("Extra flags for `npcai serve`, e.g. --model smollm2-135m.")]
        [SerializeField] string[] serveArgs = new string[0];
        [Tooltip("Learn the endpoint from --ready-file instead of the child's stdout.")]
        [SerializeField] bool useReadyFile;
        [Tooltip("Shared secret: passed to the sidecar in $NPCAI_TOKEN (never on its command line) and sent in hello.")]
        [SerializeField] string token = "";

        [Header("Per-frame budget")]
        [SerializeField] int maxMessagesPerPoll = 64;
        [SerializeField] int pollBudgetMicros = 1000;
        [Tooltip("Report each frame's time (Time.unscaledDeltaTime) so the sidecar backs off when frames run over Target Frame Ms.")]
        [SerializeField] bool reportFrameTimes;
        [Tooltip("The game's target frame time in ms (16.7 = 60 fps), sent as the budget's frame_ms on every connection when reporting frame times.")]
        [SerializeField] float targetFrameMs = 16.7f;

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
            Client.Connected += OnConnected;
            StartSidecar(false);
        }

        void Update()
        {
            if (relaunchAt >= 0f && Time.unscaledTime >= relaunchAt)
            {
                relaunchAt = -1f;
                StartSidecar(true);
            }
            if (reportFrameTimes)
                Client.ReportFrame(Time.unscaledDeltaTime * 1000.0);
            Client.Poll();
        }

        /// <summary>
        /// Client.SetBudget: only the limits given are sent. A relaunched sidecar starts from its
        /// defaults (plus Target Frame Ms when reporting frame times); set it again in Client.Connected.
        /// </summary>
        public NpcRequest SetBudget(int? threads = null, double? tokensPerS = null, double? share = null,
                                    double? frameMs = null)
        {
            return Client.SetBudget(threads, tokensPerS, share, frameMs);
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
                        UseBundle = useSidecarBundle,
                        BundleSearchFolders = new[] { Path.Combine(Application.streamingAssetsPath, "npcai") },
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
                string program = Client.Launcher != null && Client.Launcher.Program != null ? Client.Launcher.Program : command;
                Debug.LogError("npcai: cannot run '" + program + "' (" + e.Message + "). Put the sidecar bundle (npcai bundle --out "
                               + "Assets/StreamingAssets/npcai) in the project, or install npcai and set the command to it "
                               + "(or to your Python with args -m npcai).");
            }
        }

        void OnConnected(NpcAiClient client)
        {
            if (reportFrameTimes && targetFrameMs > 0f)
                client.SetBudget(frameMs: Math.Min(1000.0, targetFrameMs));
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
