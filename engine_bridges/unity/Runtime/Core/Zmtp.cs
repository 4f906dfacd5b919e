using System.Text;

namespace NpcAi
{
    /// <summary>
    /// ZMTP 3.1 wire format, as pure functions over buffers (docs/PROTOCOL.md, "Speaking ZMTP
    /// without libzmq"): the greeting, the NULL mechanism's READY command, and frames.
    /// </summary>
    public static class Zmtp
    {
        public const byte FlagMore = 0x01;
        public const byte FlagLong = 0x02;
        public const byte FlagCommand = 0x04;
        public const int GreetingLength = 64;

        /// <summary>Signature, version 3.1, mechanism NULL, as-server 0, filler.</summary>
        public static void WriteGreeting(ByteBuffer output)
        {
            int at = output.Reserve(GreetingLength);
            var d = output.Data;
            System.Array.Clear(d, at, GreetingLength);
            d[at] = 0xff;
            d[at + 9] = 0x7f;
            d[at + 10] = 3;
            d[at + 11] = 1;
            d[at + 12] = (byte)'N';
            d[at + 13] = (byte)'U';
            d[at + 14] = (byte)'L';
            d[at + 15] = (byte)'L';
            output.Commit(GreetingLength);
        }

        /// <summary>Null when the 64 bytes at <paramref name="offset"/> are a greeting we can talk to, else why not.</summary>
        public static string CheckGreeting(byte[] data, int offset)
        {
            if (data[offset] != 0xff || (data[offset + 9] & 1) != 1)
                return "the peer does not speak ZMTP";
            if (data[offset + 10] != 3)
                return "the peer speaks ZMTP major version " + data[offset + 10] + ", not 3";
            if (Encoding.ASCII.GetString(data, offset + 12, 20).TrimEnd('\0') != "NULL")
                return "the peer wants a security mechanism other than NULL";
            return null;
        }

        /// <summary>A READY command frame carrying one property, Socket-Type.</summary>
        public static void WriteReady(ByteBuffer output, string socketType)
        {
            int size = 1 + 5 + 1 + 11 + 4 + socketType.Length;
            output.Append(FlagCommand);
            output.Append((byte)size);
            AppendShortString(output, "READY");
            AppendShortString(output, "Socket-Type");
            output.Append(0);
            output.Append(0);
            output.Append(0);
            output.Append((byte)socketType.Length);
            AppendAscii(output, socketType);
        }

        /// <summary>One message frame: short (1-byte size) up to 255 bytes, long (8-byte size) beyond.</summary>
        public static void WriteFrame(ByteBuffer output, byte[] body, int offset, int count, bool more)
        {
            byte flags = more ? FlagMore : (byte)0;
            if (count <= 255)
            {
                output.Append(flags);
                output.Append((byte)count);
            }
            else
            {
                output.Append((byte)(flags | FlagLong));
                int at = output.Reserve(8);
                ulong size = (ulong)count;
                for (int i = 7; i >= 0; i--, size >>= 8)
                    output.Data[at + i] = (byte)size;
                output.Commit(8);
            }
            output.Append(body, offset, count);
        }

        /// <summary>
        /// Reads a frame header from data[offset .. offset+count). False when the header is not
        /// all there yet; the body may still be incomplete when it returns true.
        /// </summary>
        public static bool TryReadHeader(byte[] data, int offset, int count,
                                         out byte flags, out int headerLength, out long bodyLength)
        {
            flags = 0;
            headerLength = 0;
            bodyLength = 0;
            if (count < 2)
                return false;
            flags = data[offset];
            if ((flags & FlagLong) == 0)
            {
                headerLength = 2;
                bodyLength = data[offset + 1];
                return true;
            }
            if (count < 9)
                return false;
            ulong size = 0;
            for (int i = 1; i <= 8; i++)
                size = (size << 8) | data[offset + i];
            headerLength = 9;
            bodyLength = size > long.MaxValue ? long.MaxValue : (long)size;
            return true;
        }

        /// <summary>The name of a command (the body of a frame with the COMMAND flag).</summary>
        public static string CommandName(byte[] body, int offset, int count)
        {
            if (count < 1 || body[offset] > count - 1)
                return "";
            return Encoding.ASCII.GetString(body, offset + 1, body[offset]);
        }

        /// <summary>
        /// The Socket-Type property of a READY command body, or null when it has none; properties
        /// it does not know are skipped, as ZMTP requires.
        /// </summary>
        public static string ReadySocketType(byte[] body, int offset, int count)
        {
            int end = offset + count;
            int at = offset + 1 + body[offset];
            while (at < end)
            {
                int nameLength = body[at];
                int valueAt = at + 1 + nameLength + 4;
                if (valueAt > end)
                    return null;
                long valueLength = ((long)body[valueAt - 4] << 24) | ((long)body[valueAt - 3] << 16)
                                   | ((long)body[valueAt - 2] << 8) | body[valueAt - 1];
                if (valueAt + valueLength > end)
                    return null;
                string name = Encoding.ASCII.GetString(body, at + 1, nameLength);
                if (string.Equals(name, "Socket-Type", System.StringComparison.OrdinalIgnoreCase))
                    return Encoding.ASCII.GetString(body, valueAt, (int)valueLength);
                at = valueAt + (int)valueLength;
            }
            return null;
        }

        static void AppendShortString(ByteBuffer output, string text)
        {
            output.Append((byte)text.Length);
            AppendAscii(output, text);
        }

        static void AppendAscii(ByteBuffer output, string text)
        {
            for (int i = 0; i < text.Length; i++)
                output.Append((byte)text[i]);
        }
    }
}
