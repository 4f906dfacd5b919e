using System;

namespace NpcAi
{
    /// <summary>
    /// A growable byte queue: bytes are appended at the end and consumed from the front.
    /// One lives as long as its connection, so steady-state sends and receives allocate nothing.
    /// </summary>
    public sealed class ByteBuffer
    {
        byte[] data;
        int start;
        int end;

        public ByteBuffer(int capacity)
        {
            data = new byte[Math.Max(16, capacity)];
        }

        /// <summary>The backing array; the live bytes are Data[Start .. Start + Count).</summary>
        public byte[] Data { get { return data; } }
        public int Start { get { return start; } }
        public int Count { get { return end - start; } }

        public void Clear()
        {
            start = end = 0;
        }

        public void Consume(int count)
        {
            start += count;
            if (start == end)
                start = end = 0;
        }

        /// <summary>
        /// Makes room for <paramref name="count"/> more bytes and returns the index where they go;
        /// call <see cref="Commit"/> with how many were written. Moves or regrows the live bytes,
        /// so indexes taken earlier are invalid afterwards.
        /// </summary>
        public int Reserve(int count)
        {
            if (data.Length - end >= count)
                return end;
            int live = end - start;
            if (data.Length - live < count)
            {
                int size = data.Length;
                while (size - live < count)
                    size *= 2;
                var grown = new byte[size];
                Buffer.BlockCopy(data, start, grown, 0, live);
                data = grown;
            }
            else
            {
                Buffer.BlockCopy(data, start, data, 0, live);
            }
            start = 0;
            end = live;
            return end;
        }

        public void Commit(int count)
        {
            end += count;
        }

        /// <summary>Free space after the live bytes, without moving them.</summary>
        public int Tail { get { return data.Length - end; } }

        public void Append(byte value)
        {
            int at = Reserve(1);  // before touching `data`: Reserve may replace the array
            data[at] = value;
            end++;
        }

        public void Append(byte[] source, int offset, int count)
        {
            int at = Reserve(count);
            Buffer.BlockCopy(source, offset, data, at, count);
            end += count;
        }

        public void Append(ByteBuffer other)
        {
            Append(other.data, other.start, other.Count);
        }

        public byte[] ToArray()
        {
            var copy = new byte[Count];
            Buffer.BlockCopy(data, start, copy, 0, copy.Length);
            return copy;
        }
    }
}
