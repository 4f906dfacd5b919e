using System;
using System.Collections;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Text;

namespace NpcAi
{
    /// <summary>Thrown for bytes that are not msgpack, or exceed the reader's limits.</summary>
    public sealed class MsgPackException : Exception
    {
        public MsgPackException(string message) : base(message) { }
    }

    // Reinterprets float bits without unsafe code or BitConverter's array allocation.
    [StructLayout(LayoutKind.Explicit)]
    struct Float32Bits
    {
        [FieldOffset(0)] public float Float;
        [FieldOffset(0)] public uint Bits;
    }

    public enum MsgPackType { Nil, Bool, Int, Float, Str, Bin, Array, Map }

    /// <summary>
    /// The msgpack subset of protocol v1 in one place (docs/PROTOCOL.md, "msgpack subset").
    /// Decoded values are null, bool, long (ulong above long.MaxValue), float (float32),
    /// double, string, byte[], object[] and Dictionary&lt;string, object&gt;.
    /// </summary>
    public static class MsgPack
    {
        public static byte[] Encode(object value)
        {
            var writer = new MsgPackWriter(64);
            writer.WriteValue(value);
            return writer.Buffer.ToArray();
        }

        /// <summary>Decodes exactly one value; trailing bytes are an error.</summary>
        public static object Decode(byte[] data, int offset, int count, MsgPackReader reader = null)
        {
            reader = reader ?? new MsgPackReader();
            reader.Reset(data, offset, count);
            object value = reader.ReadValue(1);
            if (reader.Remaining != 0)
                throw new MsgPackException(reader.Remaining + " bytes after the value");
            return value;
        }

        public static object Decode(byte[] data)
        {
            return Decode(data, 0, data.Length);
        }
    }

    /// <summary>
    /// Writes msgpack into a reusable <see cref="ByteBuffer"/>, always in the smallest encoding.
    /// Writing strings, numbers and headers allocates nothing.
    /// </summary>
    public sealed class MsgPackWriter
    {
        const int MaxDepth = 64;  // a guard against cyclic containers, far above what the protocol allows

        static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);
        readonly ByteBuffer buffer;

        public MsgPackWriter(int capacity = 256)
        {
            buffer = new ByteBuffer(capacity);
        }

        public ByteBuffer Buffer { get { return buffer; } }

        public void Clear()
        {
            buffer.Clear();
        }

        public void WriteNil()
        {
            buffer.Append(0xc0);
        }

        public void WriteBool(bool value)
        {
            buffer.Append(value ? (byte)0xc3 : (byte)0xc2);
        }

        public void WriteInt(long value)
        {
            if (value >= 0)
                WriteUInt((ulong)value);
            else if (value >= -32)
                buffer.Append((byte)value);
            else if (value >= sbyte.MinValue)
                WriteHeader(0xd0, (ulong)value, 1);
            else if (value >= short.MinValue)
                WriteHeader(0xd1, (ulong)value, 2);
            else if (value >= int.MinValue)
                WriteHeader(0xd2, (ulong)value, 4);
            else
                WriteHeader(0xd3, (ulong)value, 8);
        }

        public void WriteUInt(ulong value)
        {
            if (value < 128)
                buffer.Append((byte)value);
            else if (value <= byte.MaxValue)
                WriteHeader(0xcc, value, 1);
            else if (value <= ushort.MaxValue)
                WriteHeader(0xcd, value, 2);
            else if (value <= uint.MaxValue)
                WriteHeader(0xce, value, 4);
            else
                WriteHeader(0xcf, value, 8);
        }

        public void WriteFloat(float value)
        {
            var bits = new Float32Bits { Float = value };
            WriteHeader(0xca, bits.Bits, 4);
        }

        public void WriteDouble(double value)
        {
            WriteHeader(0xcb, (ulong)BitConverter.DoubleToInt64Bits(value), 8);
        }

        public void WriteString(string value)
        {
            if (value == null)
            {
                WriteNil();
                return;
            }
            int length = Utf8.GetByteCount(value);
            if (length < 32)
                buffer.Append((byte)(0xa0 | length));
            else
                WriteLength(0xd9, length);
            int at = buffer.Reserve(length);
            Utf8.GetBytes(value, 0, value.Length, buffer.Data, at);
            buffer.Commit(length);
        }

        public void WriteBin(byte[] value, int offset, int count)
        {
            WriteLength(0xc4, count);
            buffer.Append(value, offset, count);
        }

        public void WriteArrayHeader(int count)
        {
            if (count < 16)
                buffer.Append((byte)(0x90 | count));
            else
                WriteContainerLength(0xdc, count);
        }

        public void WriteMapHeader(int count)
        {
            if (count < 16)
                buffer.Append((byte)(0x80 | count));
            else
                WriteContainerLength(0xde, count);
        }

        /// <summary>Copies bytes that already hold msgpack (e.g. map entries written elsewhere).</summary>
        public void WriteRaw(ByteBuffer encoded)
        {
            buffer.Append(encoded);
        }

        /// <summary>
        /// Writes any supported value: null, bool, integers, float, double, string, byte[],
        /// IDictionary (in its enumeration order) and IList. Anything else is an ArgumentException.
        /// </summary>
        public void WriteValue(object value)
        {
            WriteValue(value, 1);
        }

        void WriteValue(object value, int depth)
        {
            if (depth > MaxDepth)
                throw new ArgumentException("value nests deeper than " + MaxDepth + " levels (a cycle?)");
            if (value == null) { WriteNil(); return; }
            if (value is bool) { WriteBool((bool)value); return; }
            if (value is string) { WriteString((string)value); return; }
            if (value is int) { WriteInt((int)value); return; }
            if (value is long) { WriteInt((long)value); return; }
            if (value is double) { WriteDouble((double)value); return; }
            if (value is float) { WriteFloat((float)value); return; }
            if (value is short) { WriteInt((short)value); return; }
            if (value is sbyte) { WriteInt((sbyte)value); return; }
            if (value is byte) { WriteUInt((byte)value); return; }
            if (value is ushort) { WriteUInt((ushort)value); return; }
            if (value is uint) { WriteUInt((uint)value); return; }
            if (value is ulong) { WriteUInt((ulong)value); return; }
            var bytes = value as byte[];
            if (bytes != null) { WriteBin(bytes, 0, bytes.Length); return; }
            var map = value as IDictionary;
            if (map != null)
            {
                WriteMapHeader(map.Count);
                var entries = map.GetEnumerator();
                while (entries.MoveNext())
                {
                    WriteValue(entries.Key, depth + 1);
                    WriteValue(entries.Value, depth + 1);
                }
                return;
            }
            var list = value as IList;
            if (list != null)
            {
                WriteArrayHeader(list.Count);
                for (int i = 0; i < list.Count; i++)
                    WriteValue(list[i], depth + 1);
                return;
            }
            throw new ArgumentException("msgpack cannot encode a " + value.GetType().Name);
        }

        void WriteLength(byte code8, int length)
        {
            // code8 is the 8-bit-length form (str8 0xd9, bin8 0xc4); the 16 and 32-bit forms follow it.
            if (length <= byte.MaxValue)
                WriteHeader(code8, (ulong)length, 1);
            else if (length <= ushort.MaxValue)
                WriteHeader((byte)(code8 + 1), (ulong)length, 2);
            else
                WriteHeader((byte)(code8 + 2), (ulong)length, 4);
        }

        void WriteContainerLength(byte code16, int count)
        {
            if (count <= ushort.MaxValue)
                WriteHeader(code16, (ulong)count, 2);
            else
                WriteHeader((byte)(code16 + 1), (ulong)count, 4);
        }

        void WriteHeader(byte code, ulong value, int size)
        {
            int at = buffer.Reserve(1 + size);
            var data = buffer.Data;
            data[at] = code;
            for (int i = size; i >= 1; i--, value >>= 8)
                data[at + i] = (byte)value;
            buffer.Commit(1 + size);
        }
    }

    /// <summary>
    /// Reads msgpack from a byte range, bounded: nesting, container lengths and string sizes are
    /// checked before anything is allocated, so garbage costs an exception, never memory.
    /// One reader is reused for every frame.
    /// </summary>
    public sealed class MsgPackReader
    {
        static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);

        byte[] data = new byte[0];
        int pos;
        int end;

        /// <param name="maxDepth">deepest value accepted; a top-level value is at depth 1, as in the sidecar</param>
        public MsgPackReader(int maxDepth = 32, int maxContainerLength = 4096, int maxBytesLength = 16 << 20)
        {
            MaxDepth = maxDepth;
            MaxContainerLength = maxContainerLength;
            MaxBytesLength = maxBytesLength;
        }

        public int MaxDepth { get; private set; }
        public int MaxContainerLength { get; private set; }
        public int MaxBytesLength { get; private set; }

        public byte[] Data { get { return data; } }
        public int Remaining { get { return end - pos; } }

        public void Reset(byte[] source, int offset, int count)
        {
            data = source;
            pos = offset;
            end = offset + count;
        }

        public MsgPackType PeekType()
        {
            Need(1);
            byte b = data[pos];
            if (b <= 0x7f || b >= 0xe0) return MsgPackType.Int;
            if (b <= 0x8f) return MsgPackType.Map;
            if (b <= 0x9f) return MsgPackType.Array;
            if (b <= 0xbf) return MsgPackType.Str;
            switch (b)
            {
                case 0xc0: return MsgPackType.Nil;
                case 0xc2: case 0xc3: return MsgPackType.Bool;
                case 0xc4: case 0xc5: case 0xc6: return MsgPackType.Bin;
                case 0xca: case 0xcb: return MsgPackType.Float;
                case 0xcc: case 0xcd: case 0xce: case 0xcf:
                case 0xd0: case 0xd1: case 0xd2: case 0xd3: return MsgPackType.Int;
                case 0xd9: case 0xda: case 0xdb: return MsgPackType.Str;
                case 0xdc: case 0xdd: return MsgPackType.Array;
                case 0xde: case 0xdf: return MsgPackType.Map;
                case 0xc1: throw new MsgPackException("byte 0xc1 is never used in msgpack");
                default: throw new MsgPackException(string.Format("ext type 0x{0:x2} is not supported", b));
            }
        }

        public bool TryReadNil()
        {
            Need(1);
            if (data[pos] != 0xc0)
                return false;
            pos++;
            return true;
        }

        public bool ReadBool()
        {
            Need(1);
            byte b = data[pos];
            if (b != 0xc2 && b != 0xc3)
                throw Unexpected("a bool");
            pos++;
            return b == 0xc3;
        }

        public long ReadInt64()
        {
            Need(1);
            byte b = data[pos];
            if (b == 0xcf)
            {
                ulong u = ReadBig(8);
                if (u > long.MaxValue)
                    throw new MsgPackException("integer " + u + " does not fit a long");
                return (long)u;
            }
            return ReadSmallInt(b);
        }

        /// <summary>Any number (int, float32, float64) as a double.</summary>
        public double ReadDouble()
        {
            Need(1);
            byte b = data[pos];
            if (b == 0xca)
                return ReadFloat32();
            if (b == 0xcb)
                return BitConverter.Int64BitsToDouble((long)ReadBig(8));
            if (b == 0xcf)
                return ReadBig(8);
            return ReadSmallInt(b);
        }

        public string ReadString()
        {
            int offset, length;
            ReadStringBytes(out offset, out length);
            try
            {
                return Utf8.GetString(data, offset, length);
            }
            catch (ArgumentException)
            {
                throw new MsgPackException("string is not valid UTF-8");
            }
        }

        /// <summary>Reads a str header and returns where its UTF-8 bytes are in <see cref="Data"/>, without allocating.</summary>
        public void ReadStringBytes(out int offset, out int length)
        {
            Need(1);
            byte b = data[pos];
            if (b >= 0xa0 && b <= 0xbf)
            {
                pos++;
                length = b & 0x1f;
                if (length > MaxBytesLength)
                    throw TooLong(length);
            }
            else if (b == 0xd9 || b == 0xda || b == 0xdb)
            {
                length = ReadLength(b - 0xd9);
            }
            else
            {
                throw Unexpected("a string");
            }
            offset = TakeBytes(length);
        }

        public byte[] ReadBin()
        {
            Need(1);
            byte b = data[pos];
            if (b < 0xc4 || b > 0xc6)
                throw Unexpected("binary");
            int length = ReadLength(b - 0xc4);
            var bytes = new byte[length];
            Buffer.BlockCopy(data, TakeBytes(length), bytes, 0, length);
            return bytes;
        }

        public int ReadArrayHeader()
        {
            Need(1);
            byte b = data[pos];
            int count;
            if (b >= 0x90 && b <= 0x9f) { pos++; count = b & 0x0f; }
            else if (b == 0xdc) count = (int)ReadBig(2);
            else if (b == 0xdd) count = CheckedCount(ReadBig(4));
            else throw Unexpected("an array");
            return CheckContainer(count, 1);
        }

        public int ReadMapHeader()
        {
            Need(1);
            byte b = data[pos];
            int count;
            if (b >= 0x80 && b <= 0x8f) { pos++; count = b & 0x0f; }
            else if (b == 0xde) count = (int)ReadBig(2);
            else if (b == 0xdf) count = CheckedCount(ReadBig(4));
            else throw Unexpected("a map");
            return CheckContainer(count, 2);
        }

        /// <summary>Reads any value, which sits at nesting level <paramref name="depth"/> (1 = top level).</summary>
        public object ReadValue(int depth)
        {
            if (depth > MaxDepth)
                throw new MsgPackException("nesting deeper than " + MaxDepth);
            switch (PeekType())
            {
                case MsgPackType.Nil:
                    pos++;
                    return null;
                case MsgPackType.Bool:
                    return ReadBool();
                case MsgPackType.Int:
                    if (data[pos] == 0xcf)
                    {
                        ulong u = ReadBig(8);
                        return u > long.MaxValue ? (object)u : (long)u;
                    }
                    return ReadSmallInt(data[pos]);
                case MsgPackType.Float:
                    if (data[pos] == 0xca)
                        return ReadFloat32();
                    return ReadDouble();
                case MsgPackType.Str:
                    return ReadString();
                case MsgPackType.Bin:
                    return ReadBin();
                case MsgPackType.Array:
                {
                    int count = ReadArrayHeader();
                    var items = new object[count];
                    for (int i = 0; i < count; i++)
                        items[i] = ReadValue(depth + 1);
                    return items;
                }
                default:
                {
                    int count = ReadMapHeader();
                    var map = new Dictionary<string, object>(count);
                    for (int i = 0; i < count; i++)
                    {
                        if (PeekType() != MsgPackType.Str)
                            throw new MsgPackException("map keys must be strings");
                        string key = ReadString();
                        map[key] = ReadValue(depth + 1);
                    }
                    return map;
                }
            }
        }

        /// <summary>Steps over one value at nesting level <paramref name="depth"/> without allocating.</summary>
        public void Skip(int depth)
        {
            if (depth > MaxDepth)
                throw new MsgPackException("nesting deeper than " + MaxDepth);
            int offset, length;
            switch (PeekType())
            {
                case MsgPackType.Nil: pos++; break;
                case MsgPackType.Bool: pos++; break;
                case MsgPackType.Int:
                case MsgPackType.Float: ReadDouble(); break;
                case MsgPackType.Str: ReadStringBytes(out offset, out length); break;
                case MsgPackType.Bin: TakeBytes(ReadLength(data[pos] - 0xc4)); break;
                case MsgPackType.Array:
                    for (int i = ReadArrayHeader(); i > 0; i--)
                        Skip(depth + 1);
                    break;
                default:
                    for (int i = ReadMapHeader(); i > 0; i--)
                    {
                        Skip(depth + 1);
                        Skip(depth + 1);
                    }
                    break;
            }
        }

        /// <summary>True when data[offset .. offset+length) equals <paramref name="expected"/>.</summary>
        public static bool BytesEqual(byte[] data, int offset, int length, byte[] expected)
        {
            if (length != expected.Length)
                return false;
            for (int i = 0; i < length; i++)
                if (data[offset + i] != expected[i])
                    return false;
            return true;
        }

        long ReadSmallInt(byte b)
        {
            if (b <= 0x7f) { pos++; return b; }
            if (b >= 0xe0) { pos++; return (sbyte)b; }
            switch (b)
            {
                case 0xcc: return (long)ReadBig(1);
                case 0xcd: return (long)ReadBig(2);
                case 0xce: return (long)ReadBig(4);
                case 0xd0: return (sbyte)ReadBig(1);
                case 0xd1: return (short)ReadBig(2);
                case 0xd2: return (int)ReadBig(4);
                case 0xd3: return (long)ReadBig(8);
                default: throw Unexpected("an integer");
            }
        }

        float ReadFloat32()
        {
            var bits = new Float32Bits { Bits = (uint)ReadBig(4) };
            return bits.Float;
        }

        // Reads the marker byte and a big-endian number of `size` bytes after it.
        ulong ReadBig(int size)
        {
            Need(1 + size);
            ulong value = 0;
            for (int i = 1; i <= size; i++)
                value = (value << 8) | data[pos + i];
            pos += 1 + size;
            return value;
        }

        // Length of a str/bin whose 8-bit form is `form` 0; forms 1 and 2 are 16 and 32 bits.
        int ReadLength(int form)
        {
            ulong length = ReadBig(form == 0 ? 1 : form == 1 ? 2 : 4);
            if (length > (ulong)MaxBytesLength)
                throw TooLong((long)length);
            return (int)length;
        }

        MsgPackException TooLong(long length)
        {
            return new MsgPackException("string or binary of " + length + " bytes exceeds " + MaxBytesLength);
        }

        int TakeBytes(int length)
        {
            Need(length);
            int at = pos;
            pos += length;
            return at;
        }

        static int CheckedCount(ulong count)
        {
            return count > int.MaxValue ? int.MaxValue : (int)count;
        }

        // Each entry needs at least one byte per item, so a count beyond the data left is garbage.
        int CheckContainer(int count, int bytesPerEntry)
        {
            if (count > MaxContainerLength)
                throw new MsgPackException("container of " + count + " entries exceeds " + MaxContainerLength);
            if ((long)count * bytesPerEntry > end - pos)
                throw new MsgPackException("container of " + count + " entries is longer than the data");
            return count;
        }

        void Need(int count)
        {
            if (end - pos < count)
                throw new MsgPackException("truncated msgpack");
        }

        MsgPackException Unexpected(string what)
        {
            return new MsgPackException(string.Format("expected {0}, found byte 0x{1:x2}", what, data[pos]));
        }
    }
}
