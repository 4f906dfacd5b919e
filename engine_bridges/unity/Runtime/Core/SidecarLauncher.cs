using System;
using System.Collections.Generic;
using System.ComponentModel;
using System.Diagnostics;
using System.IO;
using System.Text;
using System.Threading;

namespace NpcAi
{
    /// <summary>How to start `npcai serve` (docs/PROTOCOL.md, "Launching").</summary>
    public sealed class SidecarOptions
    {
        public SidecarOptions()
        {
            Command = "npcai";
            CommandArgs = new string[0];
            ServeArgs = new string[0];
            Endpoint = "tcp://127.0.0.1:0";
            ReadyTimeoutMs = 300000;
            ShutdownTimeoutMs = 3000;
            UseBundle = true;
            BundleSearchFolders = new string[0];
        }

        /// <summary>
        /// Look for the self-contained sidecar (`npcai-sidecar`, `npcai-sidecar.exe` on Windows, from
        /// `npcai bundle`) before using <see cref="Command"/>: in each of <see cref="BundleSearchFolders"/>
        /// in order, then on PATH. Found, it is started with serve's flags and Command is not used.
        /// </summary>
        public bool UseBundle { get; set; }
        /// <summary>Folders that may hold a shipped sidecar bundle (NpcAiBehaviour passes StreamingAssets/npcai).</summary>
        public string[] BundleSearchFolders { get; set; }

        /// <summary>The program to run: "npcai", or an interpreter such as "python3" with CommandArgs { "-m", "npcai" }.</summary>
        public string Command { get; set; }
        /// <summary>Arguments before "serve".</summary>
        public string[] CommandArgs { get; set; }
        /// <summary>Extra flags after "serve" (e.g. "--model", "smollm2-135m", "--threads", "2").</summary>
        public string[] ServeArgs { get; set; }
        /// <summary>Where the sidecar binds; port 0 picks a free port, learnt from its READY line.</summary>
        public string Endpoint { get; set; }
        /// <summary>Learn the endpoint from --ready-file instead of stdout (stdout is then not redirected).</summary>
        public bool UseReadyFile { get; set; }
        /// <summary>The ready file; null picks one in the temp directory.</summary>
        public string ReadyFile { get; set; }
        public string WorkingDirectory { get; set; }
        /// <summary>How long the model may take to load (a first run downloads the default model).</summary>
        public int ReadyTimeoutMs { get; set; }
        /// <summary>How long to wait for the sidecar to exit after "shutdown" before killing it.</summary>
        public int ShutdownTimeoutMs { get; set; }
    }

    /// <summary>
    /// A running `npcai serve` child. Output is read by the Process class's own reader threads,
    /// so nothing here blocks the game thread except <see cref="Stop"/>, meant for quitting.
    /// </summary>
    public sealed class SidecarLauncher : IDisposable
    {
        const string ReadyPrefix = "NPCAI READY ";
        /// <summary>The environment variable that carries the token to the sidecar (docs/PROTOCOL.md, "Launching").</summary>
        public const string TokenVariable = "NPCAI_TOKEN";
        const int StderrLines = 20;
        static readonly char[] NeedsQuoting = { ' ', '\t', '"' };

        readonly SidecarOptions options;
        readonly string token;
        readonly Queue<string> stderrTail = new Queue<string>();
        readonly string readyFile;
        volatile string endpoint;
        volatile bool exited;
        volatile bool stderrDone;
        int exitTick;
        int exitCode = int.MinValue;

        public SidecarLauncher(SidecarOptions options, string token)
        {
            this.options = options;
            this.token = token;
            if (options.UseReadyFile)
                readyFile = options.ReadyFile ?? Path.Combine(Path.GetTempPath(),
                    "npcai-ready-" + Process.GetCurrentProcess().Id + "-" + Guid.NewGuid().ToString("N") + ".txt");
        }

        public Process Process { get; private set; }
        /// <summary>The program the last Start() ran: a found bundle's path, or Command.</summary>
        public string Program { get; private set; }

        /// <summary>The bundle's executable name on this platform.</summary>
        public static string BundleExecutable
        {
            get { return Environment.OSVersion.Platform == PlatformID.Win32NT ? "npcai-sidecar.exe" : "npcai-sidecar"; }
        }

        /// <summary>
        /// The first <see cref="BundleExecutable"/> in <paramref name="folders"/> (in order), then, if
        /// <paramref name="searchPath"/>, in the folders of PATH; null if there is none.
        /// </summary>
        public static string FindBundle(IEnumerable<string> folders, bool searchPath = true)
        {
            var all = new List<string>();
            if (folders != null)
                all.AddRange(folders);
            string path = searchPath ? Environment.GetEnvironmentVariable("PATH") : null;
            if (!string.IsNullOrEmpty(path))
                all.AddRange(path.Split(Path.PathSeparator));
            foreach (var folder in all)
            {
                if (string.IsNullOrEmpty(folder))
                    continue;
                string candidate;
                try
                {
                    candidate = Path.Combine(folder.Trim('"'), BundleExecutable);
                }
                catch (ArgumentException)
                {
                    continue;  // a PATH entry with characters a path cannot hold
                }
                if (File.Exists(candidate))
                    return candidate;
            }
            return null;
        }
        /// <summary>
        /// True once the child has exited and its stderr has been read to the end (or 500 ms have
        /// passed), so that <see cref="Describe"/> holds its last words: the exit event and the
        /// stderr reader run on different threads.
        /// </summary>
        public bool HasExited
        {
            get { return exited && (stderrDone || Environment.TickCount - Volatile.Read(ref exitTick) > 500); }
        }

        /// <summary>The child's exit code once it has exited and been waited for; null before.</summary>
        public int? ExitCode
        {
            get
            {
                int code = Volatile.Read(ref exitCode);
                return code == int.MinValue ? (int?)null : code;
            }
        }

        /// <summary>Starts the child; throws (Win32Exception) if the command cannot be run.</summary>
        public void Start()
        {
            if (readyFile != null && File.Exists(readyFile))
                File.Delete(readyFile);  // a stale file would announce a dead sidecar
            string bundle = options.UseBundle ? FindBundle(options.BundleSearchFolders) : null;
            var args = new List<string>();
            if (bundle == null)
            {
                args.AddRange(options.CommandArgs);
                args.Add("serve");
            }
            // else the bundle's executable is `npcai serve` itself: its flags follow directly.
            Program = bundle ?? options.Command;
            args.Add("--endpoint");
            args.Add(options.Endpoint);
            args.Add("--parent-pid");
            args.Add(Process.GetCurrentProcess().Id.ToString());
            if (readyFile != null)
            {
                args.Add("--ready-file");
                args.Add(readyFile);
            }
            args.AddRange(options.ServeArgs);

            var info = new ProcessStartInfo(Program, JoinArguments(args))
            {
                UseShellExecute = false,
                CreateNoWindow = true,
                RedirectStandardOutput = readyFile == null,
                RedirectStandardError = true,
            };
            // In the child's environment, not its arguments: any user of the machine can read a command line.
            if (!string.IsNullOrEmpty(token))
                info.EnvironmentVariables[TokenVariable] = token;
            if (options.WorkingDirectory != null)
                info.WorkingDirectory = options.WorkingDirectory;
            var process = new Process { StartInfo = info, EnableRaisingEvents = true };
            process.Exited += OnExited;
            process.ErrorDataReceived += OnStderr;
            if (readyFile == null)
                process.OutputDataReceived += OnStdout;
            process.Start();
            Process = process;
            process.BeginErrorReadLine();
            if (readyFile == null)
                process.BeginOutputReadLine();
        }

        /// <summary>The endpoint from the READY line (or the ready file) once the sidecar has announced it.</summary>
        public bool TryGetEndpoint(out string result)
        {
            if (endpoint == null && readyFile != null && File.Exists(readyFile))
            {
                try
                {
                    string text = File.ReadAllText(readyFile).Trim();
                    if (text.Length > 0)
                        endpoint = text;
                }
                catch (IOException)
                {
                    // Renamed into place atomically, so this is a transient sharing clash; try next frame.
                }
            }
            result = endpoint;
            return result != null;
        }

        /// <summary>Exit code and the last lines the sidecar wrote to stderr, for error messages.</summary>
        public string Describe()
        {
            var text = new StringBuilder();
            if (exited)
                text.Append("exit code ").Append(ExitCode.HasValue ? ExitCode.Value.ToString() : "unknown");
            lock (stderrTail)
                foreach (var line in stderrTail)
                    text.Append(text.Length > 0 ? "; " : "").Append(line);
            return text.Length > 0 ? text.ToString() : "no output";
        }

        public void Kill()
        {
            try
            {
                if (Process != null && !Process.HasExited)
                    Process.Kill();
            }
            catch (InvalidOperationException)
            {
                // It exited meanwhile.
            }
            catch (Win32Exception)
            {
                // Same, on Windows.
            }
        }

        /// <summary>Waits up to ShutdownTimeoutMs for the child to exit (after a "shutdown" request), then kills it.</summary>
        public void Stop()
        {
            if (Process == null)
                return;
            if (!Process.WaitForExit(options.ShutdownTimeoutMs))
            {
                Kill();
                Process.WaitForExit(1000);
            }
            RecordExit(Process);
        }

        public void Dispose()
        {
            Kill();
            if (Process != null)
                Process.Dispose();
            if (readyFile != null)
            {
                try
                {
                    File.Delete(readyFile);
                }
                catch (IOException)
                {
                    // Best effort: the file is stale-proofed on the next start anyway.
                }
            }
        }

        /// <summary>One command line from arguments, quoted as Windows and Mono's Unix parser both read it.</summary>
        public static string JoinArguments(IList<string> args)
        {
            var line = new StringBuilder();
            foreach (var arg in args)
            {
                if (line.Length > 0)
                    line.Append(' ');
                if (arg.Length > 0 && arg.IndexOfAny(NeedsQuoting) < 0)
                {
                    line.Append(arg);
                    continue;
                }
                line.Append('"');
                int backslashes = 0;
                foreach (char c in arg)
                {
                    if (c == '\\')
                    {
                        backslashes++;
                        continue;
                    }
                    // Backslashes are literal unless they precede a quote; then each is doubled.
                    line.Append('\\', c == '"' ? backslashes * 2 + 1 : backslashes);
                    line.Append(c);
                    backslashes = 0;
                }
                line.Append('\\', backslashes * 2);
                line.Append('"');
            }
            return line.ToString();
        }

        void RecordExit(Process process)
        {
            try
            {
                if (process.HasExited)
                    Volatile.Write(ref exitCode, process.ExitCode);
            }
            catch (InvalidOperationException)
            {
                // Not started, or already disposed: nothing to record.
            }
        }

        void OnStdout(object sender, DataReceivedEventArgs e)
        {
            if (endpoint == null && e.Data != null && e.Data.StartsWith(ReadyPrefix, StringComparison.Ordinal))
                endpoint = e.Data.Substring(ReadyPrefix.Length).Trim();
        }

        void OnStderr(object sender, DataReceivedEventArgs e)
        {
            if (e.Data == null)
            {
                stderrDone = true;
                return;
            }
            lock (stderrTail)
            {
                stderrTail.Enqueue(e.Data);
                if (stderrTail.Count > StderrLines)
                    stderrTail.Dequeue();
            }
        }

        void OnExited(object sender, EventArgs e)
        {
            RecordExit((Process)sender);
            Volatile.Write(ref exitTick, Environment.TickCount);
            exited = true;
        }
    }
}
