using System;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace NpcAi
{
    /// <summary>
    /// A ZMTP 3.1 DEALER over one non-blocking TCP socket: no threads, no native library.
    /// Everything happens inside <see cref="Update"/> and <see cref="TryReceive"/>, which never block.
    /// Messages sent before the handshake completes are queued and go out, in order, right after it.
    /// </summary>
    public sealed class ZmtpDealer : IDisposable
    {
        enum Phase { Idle, Connecting, Greeting, Handshake, Open, Closed }

        const int ReceiveChunk = 64 * 1024;

        readonly ByteBuffer queued = new ByteBuffer(1024);
        readonly ByteBuffer output = new ByteBuffer(4096);
        readonly ByteBuffer input = new ByteBuffer(ReceiveChunk);
        readonly long maxFrameBytes;
        Socket socket;
        IPEndPoint remote;
        Phase phase = Phase.Idle;
        int wanted;  // bytes the frame at the front of `input` needs in all, once its header is known

        /// <param name="maxFrameBytes">a larger incoming frame closes the connection rather than growing memory</param>
        public ZmtpDealer(long maxFrameBytes)
        {
            this.maxFrameBytes = maxFrameBytes;
        }

        public bool IsOpen { get { return phase == Phase.Open; } }
        public bool IsClosed { get { return phase == Phase.Closed; } }

        /// <summary>Why the connection closed (null while it has not).</summary>
        public string Error { get; private set; }

        /// <summary>Starts a non-blocking connect; progress is made by <see cref="Update"/>.</summary>
        public void Connect(IPEndPoint endpoint)
        {
            if (phase != Phase.Idle)
                throw new InvalidOperationException("this dealer has already connected once");
            remote = endpoint;
            socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            socket.Blocking = false;
            socket.NoDelay = true;
            phase = Phase.Connecting;
            try
            {
                socket.Connect(endpoint);
            }
            catch (SocketException e)
            {
                if (e.SocketErrorCode != SocketError.WouldBlock && e.SocketErrorCode != SocketError.InProgress)
                    Fail("cannot connect to " + endpoint + ": " + e.SocketErrorCode);
            }
        }

        /// <summary>Queues one single-frame message; it is sent at once if the connection is open.</summary>
        public void Send(byte[] body, int offset, int count)
        {
            if (phase == Phase.Closed)
                return;
            Zmtp.WriteFrame(phase == Phase.Open ? output : queued, body, offset, count, false);
            if (phase == Phase.Open)
                Flush();
        }

        /// <summary>Advances the connect and the handshake, and sends pending output.</summary>
        public void Update()
        {
            if (phase == Phase.Connecting)
                FinishConnect();
            if (phase == Phase.Greeting || phase == Phase.Handshake)
                Handshake();
            if (output.Count > 0 && phase != Phase.Closed)
                Flush();
        }

        /// <summary>
        /// The next message frame, in place in the receive buffer: valid until the next call.
        /// Command frames are skipped. False when no complete frame has arrived (or the connection closed).
        /// </summary>
        public bool TryReceive(out byte[] data, out int offset, out int count, out bool more)
        {
            data = null;
            offset = count = 0;
            more = false;
            while (phase == Phase.Open)
            {
                byte flags;
                int bodyAt, bodyLength;
                if (!TryTakeFrame(out flags, out bodyAt, out bodyLength))
                {
                    if (Fill())
                        continue;
                    return false;
                }
                if ((flags & Zmtp.FlagCommand) != 0)
                {
                    OnCommand(bodyAt, bodyLength);
                    continue;
                }
                data = input.Data;
                offset = bodyAt;
                count = bodyLength;
                more = (flags & Zmtp.FlagMore) != 0;
                return true;
            }
            return false;
        }

        /// <summary>Tries, for up to <paramref name="timeoutMs"/>, to hand the kernel everything queued (used at shutdown).</summary>
        public void FlushBlocking(int timeoutMs)
        {
            var until = DateTime.UtcNow.AddMilliseconds(timeoutMs);
            while (phase == Phase.Open && output.Count > 0 && DateTime.UtcNow < until)
            {
                Flush();
                if (output.Count > 0)
                    socket.Poll(1000, SelectMode.SelectWrite);
            }
        }

        public void Dispose()
        {
            if (socket != null)
                socket.Close();
            if (phase != Phase.Closed)
                Fail("closed");
        }

        /// <summary>Parses "tcp://host:port" (host may be an IPv4 address, [IPv6] or a name).</summary>
        public static IPEndPoint ParseEndpoint(string endpoint)
        {
            const string scheme = "tcp://";
            if (endpoint == null || !endpoint.StartsWith(scheme, StringComparison.Ordinal))
                throw new ArgumentException("only tcp:// endpoints are supported, not " + endpoint);
            string rest = endpoint.Substring(scheme.Length);
            int colon = rest.LastIndexOf(':');
            int port;
            if (colon <= 0 || !int.TryParse(rest.Substring(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out port)
                || port <= 0 || port > 65535)
                throw new ArgumentException("endpoint needs a port between 1 and 65535: " + endpoint);
            string host = rest.Substring(0, colon).Trim('[', ']');
            IPAddress address;
            if (!IPAddress.TryParse(host, out address))
                address = Dns.GetHostAddresses(host)[0];
            return new IPEndPoint(address, port);
        }

        void FinishConnect()
        {
            if (socket.Poll(0, SelectMode.SelectError))
            {
                var error = (SocketError)(int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.Error);
                Fail("cannot connect to " + remote + ": " + error);
                return;
            }
            if (!socket.Poll(0, SelectMode.SelectWrite))
                return;
            Zmtp.WriteGreeting(output);
            phase = Phase.Greeting;
        }

        void Handshake()
        {
            Fill();
            if (phase == Phase.Greeting)
            {
                if (input.Count < Zmtp.GreetingLength)
                    return;
                string problem = Zmtp.CheckGreeting(input.Data, input.Start);
                if (problem != null)
                {
                    Fail(problem);
                    return;
                }
                input.Consume(Zmtp.GreetingLength);
                Zmtp.WriteReady(output, "DEALER");
                phase = Phase.Handshake;
            }
            byte flags;
            int bodyAt, bodyLength;
            if (phase != Phase.Handshake || !TryTakeFrame(out flags, out bodyAt, out bodyLength))
                return;
            string command = (flags & Zmtp.FlagCommand) != 0 ? Zmtp.CommandName(input.Data, bodyAt, bodyLength) : "";
            if (command != "READY")
            {
                Fail(command == "ERROR" ? "the peer refused the handshake" : "the peer sent no READY command");
                return;
            }
            string socketType = Zmtp.ReadySocketType(input.Data, bodyAt, bodyLength);
            if (socketType != "ROUTER")
            {
                Fail("the peer is a " + (socketType ?? "socket of unknown type") + ", not a ROUTER");
                return;
            }
            phase = Phase.Open;
            output.Append(queued);
            queued.Clear();
        }

        // Takes the frame at the front of `input` if it is complete; its body stays in place.
        bool TryTakeFrame(out byte flags, out int bodyAt, out int bodyLength)
        {
            bodyAt = bodyLength = 0;
            int headerLength;
            long length;
            if (!Zmtp.TryReadHeader(input.Data, input.Start, input.Count, out flags, out headerLength, out length))
                return false;
            if (length > maxFrameBytes)
            {
                Fail("the peer sent a frame of " + length + " bytes, over the limit of " + maxFrameBytes);
                return false;
            }
            wanted = headerLength + (int)length;
            if (input.Count < wanted)
                return false;
            bodyAt = input.Start + headerLength;
            bodyLength = (int)length;
            input.Consume(wanted);
            wanted = 0;
            return true;
        }

        // Reads what the socket has, if anything. Polling first matters: a receive that would
        // block allocates on Mono, a poll does not, and an idle game frame should cost nothing.
        bool Fill()
        {
            if (phase == Phase.Closed || !socket.Poll(0, SelectMode.SelectRead))
                return false;
            int at = input.Reserve(Math.Max(ReceiveChunk / 4, wanted - input.Count));
            SocketError error;
            int received = socket.Receive(input.Data, at, input.Tail, SocketFlags.None, out error);
            if (error == SocketError.WouldBlock)
                return false;
            if (error != SocketError.Success)
            {
                Fail("receive failed: " + error);
                return false;
            }
            if (received == 0)
            {
                Fail("the sidecar closed the connection");
                return false;
            }
            input.Commit(received);
            return true;
        }

        void Flush()
        {
            while (output.Count > 0)
            {
                SocketError error;
                int sent = socket.Send(output.Data, output.Start, output.Count, SocketFlags.None, out error);
                if (error == SocketError.WouldBlock)
                    return;
                if (error != SocketError.Success)
                {
                    Fail("send failed: " + error);
                    return;
                }
                output.Consume(sent);
            }
        }

        void OnCommand(int bodyAt, int bodyLength)
        {
            // libzmq sends no commands after READY unless heartbeats are on; an ERROR ends the session.
            if (Zmtp.CommandName(input.Data, bodyAt, bodyLength) == "ERROR")
                Fail("the peer sent an ERROR command");
        }

        void Fail(string reason)
        {
            if (phase == Phase.Closed)
                return;
            phase = Phase.Closed;
            Error = reason;
            if (socket != null)
                socket.Close();
        }
    }
}
