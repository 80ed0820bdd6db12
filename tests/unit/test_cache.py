"""The response cache on its own: keys, LRU eviction by bytes, the --cache-config form."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.cache import CacheOptions, ResponseCache, cache_key
from kiln.errors import InvalidArgumentError
from kiln.types import InferRequest, InferResponse, InputTensor, OutputTensor, RequestedOutput, datatypes

FP32 = datatypes.BY_NAME["FP32"]


def request(values: list[float], outputs: list[str] | None = None) -> InferRequest:
    data = np.array([values], np.float32)
    r = InferRequest("m", "", "id", [InputTensor("x", FP32, data.shape, data)])
    if outputs is not None:
        r.outputs = [RequestedOutput(o) for o in outputs]
    return r


def response(nbytes: int) -> InferResponse:
    data = np.zeros(nbytes // 4, np.float32)
    return InferResponse("m", "1", "", [OutputTensor("y", FP32, data.shape, data)])


def test_keys_follow_inputs_version_and_requested_outputs() -> None:
    assert cache_key(request([1, 2]), "1") == cache_key(request([1, 2]), "1")
    assert cache_key(request([1, 2]), "1") != cache_key(request([1, 3]), "1")
    assert cache_key(request([1, 2]), "1") != cache_key(request([1, 2]), "2")
    assert cache_key(request([1, 2]), "1") != cache_key(request([1, 2], ["y"]), "1")


def test_hits_carry_the_new_request_id_and_the_oldest_entry_goes_first() -> None:
    cache = ResponseCache(CacheOptions(3000))
    for i in range(3):
        cache.put(bytes([i]), response(1000))
    assert len(cache) == 2 and cache.evictions == 1  # 3 x (1000 + overhead) does not fit in 3000
    assert cache.get(bytes([0]), "a") is None
    hit = cache.get(bytes([2]), "mine")
    assert hit is not None and hit.id == "mine" and cache.hits == 1 and cache.misses == 1
    cache.put(b"big", response(10_000))  # larger than the whole cache: not stored
    assert cache.get(b"big", "x") is None


def test_cache_config_parsing() -> None:
    assert CacheOptions.parse([]) is None
    assert CacheOptions.parse(["local,size=1048576"]) == CacheOptions(1048576)
    with pytest.raises(InvalidArgumentError, match="'local' cache only"):
        CacheOptions.parse(["redis,host=x"])
    with pytest.raises(InvalidArgumentError, match="expected local,size=BYTES"):
        CacheOptions.parse(["local,size=big"])
