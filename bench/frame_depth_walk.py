"""decode_frame on legal 1 MiB frames of tiny containers, this checkout's against an older frames.py.

    git show <commit>:npcai/protocol/frames.py > /tmp/frames_old.py
    python bench/frame_depth_walk.py /tmp/frames_old.py

The depth check walks the decoded message on the socket thread; a recursive walk took most of a second on such
a frame (docs/PERFORMANCE.md, "Session 14").
"""

import importlib.util
import sys
import time

import msgpack

from npcai.protocol import frames as new

CASES = {"a million empty maps": [[{} for _ in range(4096)] for _ in range(250)],
         "maps and zeros": [[{} if i % 2 else 0 for i in range(4096)] for _ in range(250)],
         "a million empty lists": [[[] for _ in range(4096)] for _ in range(250)]}


def main(old_path: str) -> None:
    spec = importlib.util.spec_from_file_location("frames_old", old_path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["frames_old"] = old
    spec.loader.exec_module(old)
    limits = new.Limits()
    for name, x in CASES.items():
        frame = msgpack.packb({"op": "hello", "id": 1, "x": x})
        took: dict[str, list[float]] = {}
        for label, module in (("before", old), ("after", new)) * 2:
            t = time.perf_counter()
            module.decode_frame(frame, limits)
            took.setdefault(label, []).append(time.perf_counter() - t)
        print(f"{name} ({len(frame)} bytes): before {min(took['before']) * 1e3:.0f} ms, "
              f"after {min(took['after']) * 1e3:.0f} ms (the faster of two each)")


if __name__ == "__main__":
    main(sys.argv[1])
