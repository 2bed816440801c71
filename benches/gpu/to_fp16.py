#!/usr/bin/env python3
"""Rewrites a safetensors file with every F32 tensor rounded to F16 (numpy only, no torch):
all-MiniLM-L6-v2's 91 MB FP32 file becomes ~45 MB, under what a device call carries.

    python3 to_fp16.py IN.safetensors OUT.safetensors
"""

import json
import struct
import sys

import numpy as np


def main(src: str, dst: str) -> None:
    raw = open(src, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    out_header, chunks, offset = {}, [], 0
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = t["data_offsets"]
        buf = data[a:b]
        dtype = t["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(buf, dtype="<f4").astype("<f2")
            if not np.isfinite(arr).all():
                raise SystemExit(f"{name}: overflows FP16")
            buf, dtype = arr.tobytes(), "F16"
        out_header[name] = {"dtype": dtype, "shape": t["shape"], "data_offsets": [offset, offset + len(buf)]}
        chunks.append(buf)
        offset += len(buf)
    if meta is not None:
        out_header["__metadata__"] = meta
    h = json.dumps(out_header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
