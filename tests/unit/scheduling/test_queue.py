"""The request queue: a pure data structure driven by an explicit clock."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import InvalidArgumentError, UnavailableError
from kiln.scheduling import Pending, QueuePolicy, RequestQueue, merge, split
from kiln.scheduling.queue import TimeoutAction


def pending(key: str = "a", size: int = 1, t: int = 0, level: int = 0) -> Pending:
    return Pending(key, size, t, level=level)


# -- queue ------------------------------------------------------------------------------------------------
def test_batches_take_only_compatible_requests_and_never_exceed_max() -> None:
    q = RequestQueue()
    for item in [pending("a", 3), pending("b", 1), pending("a", 4), pending("a", 2), pending("a", 1)]:
        q.put(item, 0)
    batch = q.form_batch(max_batch_size=8)
    assert [(p.key, p.batch_size) for p in batch] == [("a", 3), ("a", 4), ("a", 1)]
    q.remove(batch)
    assert [(p.key, p.batch_size) for p in q.form_batch(8)] == [("b", 1)]


def test_priority_levels_are_served_first_and_default_level_applies() -> None:
    q = RequestQueue(priority_levels=3, default_priority_level=2)
    assert q.level_for(0) == 1 and q.level_for(1) == 0 and q.level_for(3) == 2
    with pytest.raises(InvalidArgumentError, match="out of range"):
        q.level_for(4)
    low, mid, high = pending("a", level=2), pending("a", level=1), pending("a", level=0)
    for item in (low, mid, high):
        q.put(item, 0)
    assert q.ordered() == [high, mid, low]


def test_full_level_rejects_at_once() -> None:
    q = RequestQueue(default_policy=QueuePolicy(max_queue_size=2))
    q.put(pending(), 0)
    q.put(pending(), 0)
    with pytest.raises(UnavailableError, match="full"):
        q.put(pending(), 0)


def test_timeouts_reject_or_delay() -> None:
    reject = QueuePolicy(TimeoutAction.REJECT, default_timeout_us=100)
    delay = QueuePolicy(TimeoutAction.DELAY, default_timeout_us=100)
    q = RequestQueue(priority_levels=2, default_priority_level=1, level_policies={1: reject, 2: delay})
    r, d, fresh = pending(level=0), pending(level=1), pending(level=1)
    q.put(r, 0)
    q.put(d, 0)
    q.put(fresh, 50_000)
    assert q.next_deadline() == 100_000
    assert q.expire(120_000) == [r]  # REJECT: removed and returned
    assert d.delayed and not fresh.delayed
    assert q.ordered() == [fresh, d]  # DELAY: served after requests that have not timed out


def test_timeout_override_only_when_allowed() -> None:
    strict = RequestQueue(default_policy=QueuePolicy(default_timeout_us=100))
    loose = RequestQueue(default_policy=QueuePolicy(default_timeout_us=100, allow_timeout_override=True))
    assert strict.timeout_ns(0, 5) == 100_000
    assert loose.timeout_ns(0, 5) == 5_000
    assert RequestQueue().timeout_ns(0, None) is None


def test_merge_and_split() -> None:
    a = {"x": np.zeros((1, 2)), "y": np.ones((1, 3))}
    b = {"x": np.ones((2, 2)), "y": np.zeros((2, 3))}
    merged = merge([a, b])
    assert merged["x"].shape == (3, 2)
    parts = split(merged, [1, 2])
    np.testing.assert_array_equal(parts[1]["x"], b["x"])
    np.testing.assert_array_equal(parts[0]["y"], a["y"])
