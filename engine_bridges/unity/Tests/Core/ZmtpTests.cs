using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading;

namespace NpcAi.Tests
{
    /// <summary>ZMTP framing against the zmtp.* vectors, and the DEALER against a byte-level peer.</summary>
    public static class ZmtpTests
    {
        public static IEnumerable<TestCase> Cases()
        {
            yield return new TestCase("unit", "zmtp.greeting_vector", GreetingVector);
            yield return new TestCase("unit", "zmtp.ready_vectors", ReadyVectors);
            yield return new TestCase("unit", "zmtp.frame_vectors", FrameVectors);
            yield return new TestCase("unit", "zmtp.dealer_handshake_in_pieces", DealerHandshakeInPieces);
            yield return new TestCase("unit", "zmtp.dealer_rejects_non_router", DealerRejectsNonRouter);
            yield return new TestCase("unit", "zmtp.dealer_connect_refused", DealerConnectRefused);
            yield return new TestCase("unit", "zmtp.parse_endpoint", ParseEndpoint);
        }

        static void GreetingVector()
        {
            var output = new ByteBuffer(64);
            Zmtp.WriteGreeting(output);
            byte[] vector = Vectors.Get("zmtp.greeting.null_client");
            Check.Bytes(vector, output.ToArray(), "greeting");
            Check.Equal<string>(null, Zmtp.CheckGreeting(vector, 0), "our greeting is acceptable");
            var old = (byte[])vector.Clone();
            old[10] = 2;
            Check.True(Zmtp.CheckGreeting(old, 0) != null, "ZMTP 2 is refused");
            var curve = (byte[])vector.Clone();
            curve[12] = (byte)'C';
            Check.True(Zmtp.CheckGreeting(curve, 0) != null, "a mechanism other than NULL is refused");
        }

        static void ReadyVectors()
        {
            var output = new ByteBuffer(64);
            Zmtp.WriteReady(output, "DEALER");
            Check.Bytes(Vectors.Get("zmtp.ready.dealer"), output.ToArray(), "READY DEALER");

            byte[] router = Vectors.Get("zmtp.ready.router");
            byte flags;
            int header;
            long length;
            Check.True(Zmtp.TryReadHeader(router, 0, router.Length, out flags, out header, out length), "header");
            Check.Equal(Zmtp.FlagCommand, flags, "command flag");
            Check.Equal("READY", Zmtp.CommandName(router, header, (int)length), "command name");
            Check.Equal("ROUTER", Zmtp.ReadySocketType(router, header, (int)length), "Socket-Type");

            // libzmq may add properties; they are skipped.
            byte[] withIdentity = ReadyBody("Identity", "", "Socket-Type", "ROUTER", "X-Extra", "1");
            Check.Equal("ROUTER", Zmtp.ReadySocketType(withIdentity, 0, withIdentity.Length), "Socket-Type after other properties");
        }

        static void FrameVectors()
        {
            byte[] ping = Vectors.Get("message.request.ping");
            ExpectFrame("zmtp.frame.short", ping, false);
            byte[] longFrame = Vectors.Get("zmtp.frame.long");
            // The long frame's body is the say request RequestEncoder builds for these fields.
            byte[] body = new RequestEncoder().Say(9, "brom", new string('x', 300), null).ToArray();
            ExpectFrame("zmtp.frame.long", body, false);
            ExpectFrame("zmtp.frame.empty", new byte[0], false);
            // Across the short/long boundary: 255 bytes is the largest short frame, 256 the smallest long one.
            ExpectFrame("zmtp.frame.255", new RequestEncoder().Say(9, "brom", new string('x', 224), null).ToArray(), false);
            ExpectFrame("zmtp.frame.256", new RequestEncoder().Say(9, "brom", new string('x', 225), null).ToArray(), false);

            byte[] multipart = Vectors.Get("zmtp.frame.multipart");
            var output = new ByteBuffer(16);
            Zmtp.WriteFrame(output, new[] { (byte)'A' }, 0, 1, true);
            Zmtp.WriteFrame(output, new[] { (byte)'B', (byte)'C' }, 0, 2, false);
            Check.Bytes(multipart, output.ToArray(), "multipart encoding");
            byte flags;
            int header;
            long length;
            Check.True(Zmtp.TryReadHeader(multipart, 0, multipart.Length, out flags, out header, out length), "first header");
            Check.True((flags & Zmtp.FlagMore) != 0 && length == 1 && multipart[header] == 'A', "first frame \"A\" with MORE");
            int next = header + (int)length;
            Check.True(Zmtp.TryReadHeader(multipart, next, multipart.Length - next, out flags, out header, out length), "second header");
            Check.True((flags & Zmtp.FlagMore) == 0 && length == 2, "second frame of 2 bytes, last");
            Check.Bytes(new[] { (byte)'B', (byte)'C' }, Sub(multipart, next + header, 2), "second body");

            Check.True(!Zmtp.TryReadHeader(longFrame, 0, 5, out flags, out header, out length), "a partial long header is incomplete");
        }

        // A peer that dribbles its bytes: greeting in single bytes, READY with extra properties,
        // a PING command, a long frame in pieces, a short one and a multipart message.
        static void DealerHandshakeInPieces()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            Exception peerFailure = null;
            byte[] clientReady = null, clientMessage = null;
            var peer = new Thread(() =>
            {
                try
                {
                    using (var socket = listener.AcceptSocket())
                    {
                        socket.NoDelay = true;
                        FakeSidecar.ReadExactly(socket, Zmtp.GreetingLength);
                        var greeting = new ByteBuffer(64);
                        Zmtp.WriteGreeting(greeting);
                        foreach (byte b in greeting.ToArray())
                        {
                            socket.Send(new[] { b });
                            Thread.Sleep(1);
                        }
                        clientReady = FakeSidecar.ReadExactly(socket, Vectors.Get("zmtp.ready.dealer").Length);
                        byte[] ready = ReadyBody("Socket-Type", "ROUTER", "Identity", "");
                        var script = new ByteBuffer(1024);
                        script.Append(Zmtp.FlagCommand);
                        script.Append((byte)ready.Length);
                        script.Append(ready, 0, ready.Length);
                        script.Append(new byte[] { 0x04, 0x07, 0x04, (byte)'P', (byte)'I', (byte)'N', (byte)'G', 0, 0 }, 0, 9);
                        byte[] longFrame = Vectors.Get("zmtp.frame.long");
                        script.Append(longFrame, 0, longFrame.Length);
                        byte[] shortFrame = Vectors.Get("zmtp.frame.short");
                        script.Append(shortFrame, 0, shortFrame.Length);
                        byte[] multipart = Vectors.Get("zmtp.frame.multipart");
                        script.Append(multipart, 0, multipart.Length);
                        byte[] all = script.ToArray();
                        for (int at = 0; at < all.Length; at += 37)
                        {
                            socket.Send(all, at, Math.Min(37, all.Length - at), SocketFlags.None);
                            Thread.Sleep(1);
                        }
                        clientMessage = FakeSidecar.ReadExactly(socket, Vectors.Get("zmtp.frame.short").Length);
                    }
                }
                catch (Exception e)
                {
                    peerFailure = e;
                }
            });
            peer.Start();

            var dealer = new ZmtpDealer(1 << 20);
            byte[] ping = Vectors.Get("message.request.ping");
            dealer.Send(ping, 0, ping.Length);  // queued until the handshake is done
            dealer.Connect((IPEndPoint)listener.LocalEndpoint);
            var bodies = new List<byte[]>();
            var more = new List<bool>();
            var clock = Stopwatch.StartNew();
            while (bodies.Count < 4 && clock.ElapsedMilliseconds < 5000 && !dealer.IsClosed)
            {
                dealer.Update();
                byte[] data;
                int offset, count;
                bool isMore;
                while (dealer.TryReceive(out data, out offset, out count, out isMore))
                {
                    bodies.Add(Sub(data, offset, count));
                    more.Add(isMore);
                }
                Thread.Sleep(1);
            }
            Check.True(peer.Join(5000), "peer finished");
            dealer.Dispose();
            listener.Stop();
            if (peerFailure != null)
                throw new TestFailure("peer: " + peerFailure.Message);
            Check.Equal(4, bodies.Count, "messages received (" + (dealer.Error ?? "open") + ")");
            byte[] longBody = Vectors.Get("zmtp.frame.long");
            Check.Bytes(Sub(longBody, 9, longBody.Length - 9), bodies[0], "long frame body");
            Check.Bytes(ping, bodies[1], "short frame body");
            Check.True(more[2] && bodies[2].Length == 1 && !more[3] && bodies[3].Length == 2, "multipart parts and MORE flags");
            Check.Bytes(Vectors.Get("zmtp.ready.dealer"), clientReady, "the dealer's READY");
            Check.Bytes(Vectors.Get("zmtp.frame.short"), clientMessage, "the queued message, framed, after the handshake");
        }

        static void DealerRejectsNonRouter()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var peer = new Thread(() =>
            {
                try
                {
                    using (var socket = listener.AcceptSocket())
                    {
                        FakeSidecar.ReadExactly(socket, Zmtp.GreetingLength);
                        var output = new ByteBuffer(128);
                        Zmtp.WriteGreeting(output);
                        Zmtp.WriteReady(output, "PUB");
                        socket.Send(output.ToArray());
                        socket.Receive(new byte[256]);
                        Thread.Sleep(200);
                    }
                }
                catch (SocketException)
                {
                    // The dealer hung up on us, as it should.
                }
            });
            peer.Start();
            var dealer = new ZmtpDealer(1 << 20);
            dealer.Connect((IPEndPoint)listener.LocalEndpoint);
            var clock = Stopwatch.StartNew();
            while (!dealer.IsClosed && clock.ElapsedMilliseconds < 3000)
            {
                dealer.Update();
                Thread.Sleep(1);
            }
            peer.Join(2000);
            listener.Stop();
            Check.True(dealer.IsClosed, "the dealer closed");
            Check.True(dealer.Error.Contains("PUB"), "it says why: " + dealer.Error);
        }

        static void DealerConnectRefused()
        {
            var dealer = new ZmtpDealer(1 << 20);
            dealer.Connect(new IPEndPoint(IPAddress.Loopback, FreePort()));
            var clock = Stopwatch.StartNew();
            while (!dealer.IsClosed && clock.ElapsedMilliseconds < 3000)
            {
                dealer.Update();
                Thread.Sleep(1);
            }
            Check.True(dealer.IsClosed, "a refused connect closes the dealer");
            Check.True(dealer.Error.Contains("cannot connect"), "it says why: " + dealer.Error);
        }

        static void ParseEndpoint()
        {
            Check.Equal("127.0.0.1:40735", ZmtpDealer.ParseEndpoint("tcp://127.0.0.1:40735").ToString(), "IPv4");
            Check.Equal(AddressFamily.InterNetworkV6, ZmtpDealer.ParseEndpoint("tcp://[::1]:5555").AddressFamily, "IPv6");
            Check.Throws<ArgumentException>(() => ZmtpDealer.ParseEndpoint("ipc:///tmp/x"), "ipc is not supported");
            Check.Throws<ArgumentException>(() => ZmtpDealer.ParseEndpoint("tcp://127.0.0.1:0"), "port 0 cannot be connected to");
        }

        public static int FreePort()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            int port = ((IPEndPoint)listener.LocalEndpoint).Port;
            listener.Stop();
            return port;
        }

        static void ExpectFrame(string vector, byte[] body, bool more)
        {
            byte[] expected = Vectors.Get(vector);
            Check.Bytes(expected, Frame(body, more), vector + " encodes");
            byte flags;
            int header;
            long length;
            Check.True(Zmtp.TryReadHeader(expected, 0, expected.Length, out flags, out header, out length), vector + " header");
            Check.Equal((long)body.Length, length, vector + " body length");
            Check.Bytes(body, Sub(expected, header, (int)length), vector + " body");
        }

        static byte[] Frame(byte[] body, bool more)
        {
            var output = new ByteBuffer(16);
            Zmtp.WriteFrame(output, body, 0, body.Length, more);
            return output.ToArray();
        }

        // A READY command body with the given (name, value) properties.
        static byte[] ReadyBody(params string[] properties)
        {
            var body = new ByteBuffer(64);
            body.Append(5);
            foreach (char c in "READY")
                body.Append((byte)c);
            for (int i = 0; i < properties.Length; i += 2)
            {
                body.Append((byte)properties[i].Length);
                foreach (char c in properties[i])
                    body.Append((byte)c);
                body.Append(0);
                body.Append(0);
                body.Append(0);
                body.Append((byte)properties[i + 1].Length);
                foreach (char c in properties[i + 1])
                    body.Append((byte)c);
            }
            return body.ToArray();
        }

        static byte[] Sub(byte[] data, int offset, int count)
        {
            var copy = new byte[count];
            Buffer.BlockCopy(data, offset, copy, 0, count);
            return copy;
        }
    }
}
