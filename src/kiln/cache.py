"""Triton's response cache: a server-wide LRU of responses, keyed by the model, its version, the exact input bytes
(names, datatypes, shapes, data) and the outputs asked for, bounded in bytes (``--cache-config local,size=N``).
A model opts in with ``response_cache { enable: true }``; decoupled and sequence models cannot (their answers
depend on more than their inputs)."""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from kiln.errors import InvalidArgumentError
from kiln.types import InferRequest, InferResponse, OutputTensor, tensors


@dataclass(frozen=True)
class CacheOptions:
    size_bytes: int

    @classmethod
    def parse(cls, specs: list[str]) -> CacheOptions | None:
        """``--cache-config local,size=BYTES`` (Triton's form; ``local`` is the one cache Kiln has)."""
        if not specs:
            return None
        size = None
        for spec in specs:
            name, _, setting = spec.partition(",")
            if name != "local":
                raise InvalidArgumentError(
                    f"--cache-config {spec!r}: Kiln has the 'local' cache only (e.g. local,size=104857600)"
                )
            key, _, value = setting.partition("=")
            if key != "size" or not value.isdigit():
                raise InvalidArgumentError(f"--cache-config {spec!r}: expected local,size=BYTES")
            size = int(value)
        assert size is not None
        return cls(size)


def cache_key(request: InferRequest, version: str) -> bytes:
    """A digest of what a response depends on: model, version, inputs (name, datatype, shape, bytes) and the
    outputs asked for (with classification counts)."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(f"{request.model_name}\0{version}\0".encode())
    for tensor in sorted(request.inputs, key=lambda t: t.name):
        digest.update(f"{tensor.name}\0{tensor.datatype.name}\0{list(tensor.shape)}\0".encode())
        raw = tensors.raw_view(tensor.datatype, tensor.data)
        digest.update(struct.pack("<Q", len(raw)))
        digest.update(raw)
    if request.outputs is not None:
        for out in sorted(request.outputs, key=lambda o: o.name):
            digest.update(f"out\0{out.name}\0{out.classification}\0".encode())
    return digest.digest()


def _size(response: InferResponse) -> int:
    return sum(int(np.asarray(o.data).nbytes) for o in response.outputs) + 256


class ResponseCache:
    """Responses by key, least recently used first out, never above ``size_bytes`` in all."""

    def __init__(self, options: CacheOptions) -> None:
        self.capacity = options.size_bytes
        self.used = 0
        self._entries: OrderedDict[bytes, tuple[InferResponse, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: bytes, request_id: str) -> InferResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        response = entry[0]
        outputs = [OutputTensor(o.name, o.datatype, o.shape, o.data) for o in response.outputs]
        return replace(response, id=request_id, outputs=outputs, durations=None)

    def put(self, key: bytes, response: InferResponse) -> None:
        size = _size(response)
        if size > self.capacity or key in self._entries:
            return
        while self.used + size > self.capacity and self._entries:
            _, (_, freed) = self._entries.popitem(last=False)
            self.used -= freed
            self.evictions += 1
        # the arrays are the model's own outputs, never written to after the response: stored without a copy
        self._entries[key] = (response, size)
        self.used += size

    def __len__(self) -> int:
        return len(self._entries)
