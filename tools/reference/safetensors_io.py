"""Minimal pure-Python safetensors reader and writer (numpy only).

File layout (https://github.com/huggingface/safetensors, format description):

    [8 bytes]  N = length of the JSON header, unsigned 64-bit little-endian
    [N bytes]  JSON header, UTF-8. We pad it with spaces so that 8 + N is a
               multiple of 8 (the data then starts 8-byte aligned).
    [rest]     the raw tensor bytes, little-endian, row-major (C order),
               one tensor after the other with no gaps.

The header maps every tensor name to
    {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
where the offsets are byte offsets relative to the start of the data block.
An optional "__metadata__" entry maps strings to strings.

We do not depend on the PyPI `safetensors` package on purpose: the fixtures
must be readable by the project's own C++ reader, so this file is also a small
executable description of the format we rely on.
"""

import json
import struct
from collections import OrderedDict

import numpy as np

# safetensors dtype string  <->  numpy dtype (always little-endian)
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def _np_to_st_dtype(arr):
    for name, dt in _DTYPES.items():
        if arr.dtype.kind == dt.kind and arr.dtype.itemsize == dt.itemsize:
            return name
    raise TypeError("unsupported dtype for safetensors: %s" % arr.dtype)


def _to_numpy(t):
    """Accept numpy arrays and torch tensors (without importing torch here)."""
    if isinstance(t, np.ndarray):
        return t
    if hasattr(t, "detach"):  # torch.Tensor
        return t.detach().cpu().contiguous().numpy()
    return np.asarray(t)


def save_file(tensors, path, metadata=None):
    """Write `tensors` (a dict name -> numpy array or torch tensor) to `path`.

    Tensors are written in the dict's iteration order, which makes the files
    byte-for-byte deterministic.
    """
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        arr = _to_numpy(t)
        st = _np_to_st_dtype(arr)
        # (np.ascontiguousarray would turn a 0-d array into shape [1])
        arr = arr.astype(_DTYPES[st], copy=False)
        raw = arr.tobytes(order="C")
        header[name] = {
            "dtype": st,
            "shape": [int(s) for s in arr.shape],
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad with spaces so that the data block starts at a multiple of 8.
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for raw in blobs:
            f.write(raw)


def read_header(path):
    """Return (header dict without __metadata__, metadata dict, data start)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=OrderedDict)
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, 8 + n


def load_file(path):
    """Read a safetensors file into an OrderedDict name -> numpy array.

    Checks that every entry's byte range matches its dtype and shape and that
    the ranges tile the data block exactly.
    """
    header, _meta, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    out = OrderedDict()
    spans = []
    for name, e in header.items():
        dt = _DTYPES[e["dtype"]]
        shape = tuple(e["shape"])
        b, end = e["data_offsets"]
        numel = int(np.prod(shape, dtype=np.int64))
        if end - b != numel * dt.itemsize or end > len(data):
            raise ValueError("bad data_offsets for %s in %s" % (name, path))
        out[name] = np.frombuffer(data, dtype=dt, count=numel, offset=b).reshape(shape).copy()
        spans.append((b, end))
    spans.sort()
    pos = 0
    for b, end in spans:
        if b != pos:
            raise ValueError("data block of %s is not contiguous" % path)
        pos = end
    if pos != len(data):
        raise ValueError("trailing bytes in %s" % path)
    return out


def load_metadata(path):
    return read_header(path)[1]


def load_torch(path):
    """Like load_file, but returns torch tensors."""
    import torch

    return OrderedDict((k, torch.from_numpy(v)) for k, v in load_file(path).items())
