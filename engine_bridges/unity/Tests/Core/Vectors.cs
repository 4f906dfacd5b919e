using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;

namespace NpcAi.Tests
{
    /// <summary>
    /// engine_bridges/conformance/vectors.tsv (name, hex, description), read at test time.
    /// Found through NPCAI_VECTORS, or by walking up from the working directory.
    /// </summary>
    public static class Vectors
    {
        static List<KeyValuePair<string, byte[]>> all;

        public static string RepoRoot()
        {
            string path = Environment.GetEnvironmentVariable("NPCAI_VECTORS");
            if (!string.IsNullOrEmpty(path))
                return Path.GetFullPath(Path.Combine(Path.GetDirectoryName(path), "..", ".."));
            for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir != null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "engine_bridges", "conformance", "vectors.tsv")))
                    return dir.FullName;
            throw new SkipException("engine_bridges/conformance/vectors.tsv not found (set NPCAI_VECTORS)");
        }

        public static List<KeyValuePair<string, byte[]>> All()
        {
            if (all != null)
                return all;
            string file = Environment.GetEnvironmentVariable("NPCAI_VECTORS");
            if (string.IsNullOrEmpty(file))
                file = Path.Combine(RepoRoot(), "engine_bridges", "conformance", "vectors.tsv");
            var vectors = new List<KeyValuePair<string, byte[]>>();
            foreach (string line in File.ReadAllLines(file))
            {
                if (line.Length == 0 || line[0] == '#')
                    continue;
                string[] columns = line.Split('\t');
                vectors.Add(new KeyValuePair<string, byte[]>(columns[0], FromHex(columns[1])));
            }
            if (vectors.Count == 0)
                throw new TestFailure(file + " holds no vectors");
            all = vectors;
            return all;
        }

        public static byte[] Get(string name)
        {
            foreach (var v in All())
                if (v.Key == name)
                    return v.Value;
            throw new TestFailure("no vector named " + name);
        }

        public static byte[] FromHex(string hex)
        {
            var bytes = new byte[hex.Length / 2];
            for (int i = 0; i < bytes.Length; i++)
                bytes[i] = byte.Parse(hex.Substring(2 * i, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            return bytes;
        }
    }
}
