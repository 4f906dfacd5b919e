using System;
using System.Collections.Generic;
using System.Net;
using System.Net.Sockets;
using System.Threading;

namespace NpcAi.Tests
{
    /// <summary>
    /// A scripted ZMTP ROUTER peer on loopback, run on its own thread with blocking sockets, so
    /// the client's logic can be tested deterministically without Python. <see cref="Respond"/>
    /// maps each request to the replies to send (none keeps it silent).
    /// </summary>
    public sealed class FakeSidecar : IDisposable
    {
        readonly TcpListener listener;
        readonly Thread thread;
        readonly List<Dictionary<string, object>> received = new List<Dictionary<string, object>>();
        readonly List<byte[]> receivedBodies = new List<byte[]>();
        volatile Socket peer;
        volatile bool stopping;
        Exception failure;

        public FakeSidecar(Func<Dictionary<string, object>, IEnumerable<Dictionary<string, object>>> respond)
        {
            Respond = respond;
            listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            Endpoint = "tcp://127.0.0.1:" + ((IPEndPoint)listener.LocalEndpoint).Port;
            thread = new Thread(Serve) { IsBackground = true, Name = "fake-sidecar" };
            thread.Start();
        }

        public string Endpoint { get; private set; }
        public Func<Dictionary<string, object>, IEnumerable<Dictionary<string, object>>> Respond { get; set; }

        /// <summary>Requests received so far (a copy).</summary>
        public List<Dictionary<string, object>> Received
        {
            get { lock (received) return new List<Dictionary<string, object>>(received); }
        }

        /// <summary>The raw msgpack bodies of the requests received so far, in the same order (a copy).</summary>
        public List<byte[]> ReceivedBodies
        {
            get { lock (received) return new List<byte[]>(receivedBodies); }
        }

        /// <summary>Sends one reply now, from the test's thread (e.g. a late or unsolicited reply).</summary>
        public void Push(Dictionary<string, object> reply)
        {
            PushBytes(MsgPack.Encode(reply));
        }

        /// <summary>Sends one reply body as given (e.g. bytes no encoder writes).</summary>
        public void PushBytes(byte[] body)
        {
            var frame = new ByteBuffer(64);
            Zmtp.WriteFrame(frame, body, 0, body.Length, false);
            lock (listener)
                peer.Send(frame.Data, frame.Start, frame.Count, SocketFlags.None);
        }

        /// <summary>Drops the connection, as a crashed sidecar's kernel would.</summary>
        public void HangUp()
        {
            stopping = true;
            var p = peer;
            if (p != null)
                p.Close();
        }

        public void Dispose()
        {
            HangUp();
            listener.Stop();
            thread.Join(2000);
            if (failure != null)
                throw new TestFailure("fake sidecar failed: " + failure);
        }

        public static Dictionary<string, object> Reply(object id, string @event, params object[] fields)
        {
            var map = new Dictionary<string, object> { { "v", 1L }, { "id", id }, { "event", @event } };
            for (int i = 0; i < fields.Length; i += 2)
                map[(string)fields[i]] = fields[i + 1];
            return map;
        }

        void Serve()
        {
            try
            {
                var socket = listener.AcceptSocket();
                socket.NoDelay = true;
                peer = socket;
                byte[] greeting = ReadExactly(socket, Zmtp.GreetingLength);
                var output = new ByteBuffer(128);
                Zmtp.WriteGreeting(output);
                Zmtp.WriteReady(output, "ROUTER");
                socket.Send(output.ToArray());
                Check.Bytes(Vectors.Get("zmtp.greeting.null_client"), greeting, "client greeting");
                ReadFrame(socket);  // the client's READY, checked byte for byte in ZmtpTests
                while (!stopping)
                {
                    byte flags;
                    byte[] body = ReadFrame(socket, out flags);
                    if (body == null)
                        return;
                    var request = (Dictionary<string, object>)MsgPack.Decode(body);
                    lock (received)
                    {
                        received.Add(request);
                        receivedBodies.Add(body);
                    }
                    var replies = Respond(request);
                    if (replies == null)
                        continue;
                    foreach (var reply in replies)
                        Push(reply);
                }
            }
            catch (Exception e)
            {
                if (!stopping)
                    failure = e;
            }
        }

        public static byte[] ReadFrame(Socket socket)
        {
            byte flags;
            return ReadFrame(socket, out flags);
        }

        /// <summary>One whole frame's body, blocking; null at end of stream.</summary>
        public static byte[] ReadFrame(Socket socket, out byte flags)
        {
            byte[] head = ReadExactly(socket, 2);
            flags = 0;
            if (head == null)
                return null;
            flags = head[0];
            long length = head[1];
            if ((flags & Zmtp.FlagLong) != 0)
            {
                byte[] rest = ReadExactly(socket, 7);
                length = head[1];
                for (int i = 0; i < 7; i++)
                    length = (length << 8) | rest[i];
            }
            return ReadExactly(socket, (int)length) ?? new byte[0];
        }

        public static byte[] ReadExactly(Socket socket, int count)
        {
            var bytes = new byte[count];
            int have = 0;
            while (have < count)
            {
                int n = socket.Receive(bytes, have, count - have, SocketFlags.None);
                if (n == 0)
                    return null;
                have += n;
            }
            return bytes;
        }
    }
}
