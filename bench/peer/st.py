"""Minimal safetensors reader/writer for the peer benchmarks (Debian has python3-torch and numpy, but not the
`safetensors` package). Only what the peer scripts need: header parsing, lazy per-tensor reads into torch tensors,
and writing a dict of torch tensors. Layout per the safetensors spec: u64 LE header length, JSON header, data."""

import json
import struct

import numpy as np
import torch

_NP = {
    'F64': np.float64,
    'F32': np.float32,
    'F16': np.float16,
    'BF16': np.int16,
    'I64': np.int64,
    'I32': np.int32,
    'I16': np.int16,
    'I8': np.int8,
    'U8': np.uint8,
    'BOOL': np.bool_,
}
_NAME = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.float64: 'F64'}


class SafeFile:
    """A safetensors file opened lazily: `keys()`, `meta(name)`, `get(name)` (a torch tensor, stored dtype)."""

    def __init__(self, path):
        self.path = path
        self.fh = open(path, 'rb')
        (n,) = struct.unpack('<Q', self.fh.read(8))
        header = json.loads(self.fh.read(n))
        self.metadata = header.pop('__metadata__', {}) or {}
        self.header = header
        self.base = 8 + n

    def keys(self):
        return list(self.header.keys())

    def meta(self, name):
        return self.header[name]

    def get(self, name):
        h = self.header[name]
        a, b = h['data_offsets']
        self.fh.seek(self.base + a)
        raw = self.fh.read(b - a)
        arr = np.frombuffer(raw, dtype=_NP[h['dtype']]).reshape(h['shape'])
        t = torch.from_numpy(arr.copy())
        if h['dtype'] == 'BF16':
            t = ((t.to(torch.int32) & 0xFFFF) << 16).view(torch.float32).to(torch.bfloat16)
        return t

    def close(self):
        self.fh.close()


def save(tensors, path, metadata=None):
    """Write {name: torch tensor} as safetensors (names sorted, as the reference writer does)."""
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        if t.dtype == torch.bfloat16:
            data = (t.view(torch.int16).numpy()).tobytes()
        else:
            data = t.numpy().tobytes()
        header[name] = {'dtype': _NAME[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header['__metadata__'] = {k: str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(',', ':')).encode()
    hb += b' ' * ((8 - len(hb) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(hb)))
        f.write(hb)
        for blob in blobs:
            f.write(blob)
