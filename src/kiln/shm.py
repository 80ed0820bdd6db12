"""Triton's system shared memory extension: clients register POSIX shared-memory regions by name, then send
inputs from them and ask for outputs to be written into them instead of sending tensor bytes.

Safety first (out-of-range offsets are a known CVE class in this extension):

- a key is a POSIX shared-memory name (``/name``: one leading slash, no other, nothing that leaves
  ``/dev/shm``); the object must exist already (Kiln never creates one) and be a regular file;
- the registered window (``offset``, ``byte_size``) must lie inside the object, and every tensor's
  ``shared_memory_offset`` + ``shared_memory_byte_size`` inside the window;
- nothing is mapped: tensors are read and written with ``preadv``/``pwrite`` at checked positions of the file
  descriptor, so no byte outside the registered window is ever touched;
- unregistering a region that in-flight requests use removes its name at once and closes its descriptor when
  the last of them is done.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from kiln.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnimplementedError
from kiln.types import InferRequest, InferResponse, InputTensor, tensors

SHM_DIR = "/dev/shm"
_KEY = re.compile(r"^/[A-Za-z0-9._-]{1,250}$")
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(eq=False)
class Region:
    status: RegionStatus
    fd: int
    users: int = 0
    removed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self) -> None:
        with self.lock:
            self.users += 1

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            close = self.removed and self.users == 0
        if close:
            os.close(self.fd)

    def remove(self) -> None:
        with self.lock:
            self.removed = True
            close = self.users == 0
        if close:
            os.close(self.fd)

    def window(self, tensor: str, offset: int, size: int) -> int:
        """The file position of ``size`` bytes at ``offset`` in the window, checked; for a tensor's messages."""
        name, limit = self.status.name, self.status.byte_size
        if offset < 0 or (offset >= limit and size > 0):
            raise InvalidArgumentError(
                f"Invalid offset for shared memory region: '{name}' (tensor '{tensor}')"
            )
        if size < 0 or offset + size > limit:
            raise InvalidArgumentError(
                f"Invalid offset + byte size for shared memory region: '{name}' (tensor '{tensor}': offset "
                f"{offset} + {size} bytes, the region holds {limit})"
            )
        return self.status.offset + offset

    def read(self, tensor: str, offset: int, size: int) -> np.ndarray:
        position = self.window(tensor, offset, size)
        buffer = np.empty(size, np.uint8)
        done = 0
        while done < size:  # preadv may return fewer bytes than asked
            got = os.preadv(self.fd, [memoryview(buffer)[done:]], position + done)
            if got <= 0:
                raise InvalidArgumentError(f"shared memory region '{self.status.name}' ended while reading")
            done += got
        return buffer

    def write(self, tensor: str, offset: int, data: bytes | memoryview) -> None:
        position = self.window(tensor, offset, len(data))
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], position + done)


class SharedMemoryRegistry:
    """The registered system shared-memory regions, by name (shared by both transports)."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgumentError("'region name' is necessary to register system shared memory region")
        if not isinstance(key, str) or not _KEY.match(key) or key in ("/.", "/.."):
            raise InvalidArgumentError(
                f"failed to register shared memory region '{name}': key {key!r} is not a POSIX shared memory "
                f"name ('/name': letters, digits, '.', '_', '-')"
            )
        for what, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(
                    f"failed to register shared memory region '{name}': {what} must be >= 0"
                )
        with self._lock:
            if name in self._regions:
                raise AlreadyExistsError(f"shared memory region '{name}' already in manager")
            path = os.path.join(SHM_DIR, key[1:])
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                raise InvalidArgumentError(f"Unable to open shared memory region: '{key}'") from None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or offset + byte_size > info.st_size:
                os.close(fd)
                raise InvalidArgumentError(
                    f"failed to register shared memory region '{name}': invalid args (offset {offset} + "
                    f"byte_size {byte_size} is past the end of '{key}', {info.st_size} bytes)"
                )
            self._regions[name] = Region(RegionStatus(name, key, offset, byte_size), fd)

    def status(self, name: str = "") -> list[RegionStatus]:
        with self._lock:
            if name:
                region = self._regions.get(name)
                if region is None:
                    raise NotFoundError(f"Unable to find system shared memory region: '{name}'")
                return [region.status]
            return [r.status for r in self._regions.values()]

    def unregister(self, name: str = "") -> None:
        """One region (an unknown name is no error, as in Triton), or every region."""
        with self._lock:
            names = [name] if name else list(self._regions)
            removed = [self._regions.pop(n) for n in names if n in self._regions]
        for region in removed:
            region.remove()

    def close(self) -> None:
        self.unregister()

    def _acquire(self, name: object, tensor: str) -> Region:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"tensor '{tensor}': '{REGION}' must be a region name")
        with self._lock:
            region = self._regions.get(name)
            if region is None:
                raise NotFoundError(f"Unable to find shared memory region: '{name}'")
            region.acquire()
        return region

    def bind(self, request: InferRequest) -> Binding | None:
        """Read the request's shared-memory inputs into it and check its shared-memory outputs; None when it
        uses no shared memory (the common case, checked cheaply)."""
        inputs = [t for t in request.inputs if t.parameters and REGION in t.parameters]
        outputs = [o for o in request.outputs or () if o.parameters and REGION in o.parameters]
        if not inputs and not outputs:
            for t in request.inputs:
                _refuse_stray(t.parameters, f"input '{t.name}'")
            return None
        binding = Binding()
        try:
            for tensor in inputs:
                region = binding.hold(self._acquire(tensor.parameters[REGION], tensor.name))
                offset, size = _window(tensor.parameters, f"input '{tensor.name}'")
                _read_input(region, tensor, offset, size, request.model_name)
            for out in outputs:
                if out.classification:
                    raise InvalidArgumentError(
                        f"output '{out.name}': classification cannot be written to shared memory"
                    )
                region = binding.hold(self._acquire(out.parameters[REGION], out.name))
                offset, size = _window(out.parameters, f"output '{out.name}'")
                region.window(out.name, offset, size)
                binding.outputs[out.name] = (region, offset, size)
        except BaseException:
            binding.release()
            raise
        return binding


class Binding:
    """The regions one request holds, and where its outputs go."""

    __slots__ = ("outputs", "regions")

    def __init__(self) -> None:
        self.regions: list[Region] = []
        self.outputs: dict[str, tuple[Region, int, int]] = {}

    def hold(self, region: Region) -> Region:
        self.regions.append(region)
        return region

    def write(self, response: InferResponse) -> None:
        """Write the outputs placed in shared memory; their tensors then carry no data to the client."""
        for out in response.outputs:
            place = self.outputs.get(out.name)
            if place is None:
                continue
            region, offset, size = place
            raw = tensors.raw_view(out.datatype, out.data)
            if len(raw) > size:
                raise InvalidArgumentError(
                    f"shared memory size specified with the request for output '{out.name}' ({size} bytes) "
                    f"should be at least {len(raw)} bytes to hold the results"
                )
            region.write(out.name, offset, raw)
            out.shared_memory = True

    def release(self) -> None:
        for region in self.regions:
            region.release()
        self.regions = []


def _window(params: dict[str, object], where: str) -> tuple[int, int]:
    size = params.get(BYTE_SIZE)
    if size is None:
        raise InvalidArgumentError(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for {where}"
        )
    offset = params.get(OFFSET, 0)
    for key, value in ((BYTE_SIZE, size), (OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(f"{where}: '{key}' must be an integer >= 0")
    return offset, size  # type: ignore[return-value]


def _read_input(region: Region, tensor: InputTensor, offset: int, size: int, model: str) -> None:
    if tensor.datatype.name != "BYTES":
        expected = tensors.element_count(tensor.shape) * tensor.datatype.itemsize
        if size != expected:
            raise InvalidArgumentError(
                tensors.byte_size_mismatch(tensor.name, model, expected, size, tensor.shape, tensor.datatype)
                + ": the input's shared_memory_byte_size"
            )
    raw = region.read(tensor.name, offset, size)
    tensor.data = tensors.from_raw(tensor.name, tensor.datatype, tensor.shape, memoryview(raw), model)


def _refuse_stray(params: dict[str, object], where: str) -> None:
    if params and (BYTE_SIZE in params or OFFSET in params):
        raise InvalidArgumentError(f"{where}: '{BYTE_SIZE}' / '{OFFSET}' given without '{REGION}'")


def refuse_cuda(names: Iterable[str] = ()) -> None:
    raise UnimplementedError(
        "CUDA shared memory is not supported by this server: it has no GPU (system shared memory is: "
        "/v2/systemsharedmemory)"
    )
