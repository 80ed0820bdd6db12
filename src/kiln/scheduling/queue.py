"""The dynamic batcher's request queue: priority levels, per-level queue policies, batch formation.

Pure data structure (no asyncio, no clock of its own): callers pass ``now`` in nanoseconds, so ordering,
capacity, timeouts and batch formation are testable deterministically.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kiln.config.schema import model_config_pb2
from kiln.errors import InvalidArgumentError, ModelConfigError, UnavailableError


class TimeoutAction(enum.Enum):
    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclass(frozen=True)
class QueuePolicy:
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_us: int = 0  # 0: no timeout
    allow_timeout_override: bool = False
    max_queue_size: int = 0  # 0: unbounded

    @classmethod
    def from_config(cls, policy: model_config_pb2.ModelQueuePolicy) -> QueuePolicy:
        action = model_config_pb2.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action)
        return cls(
            TimeoutAction[action],
            policy.default_timeout_microseconds,
            policy.allow_timeout_override,
            policy.max_queue_size,
        )


@dataclass(eq=False)
class Pending:
    """One queued request."""

    key: Hashable  # requests merge only with equal keys (same inputs, dtypes and non-batch shapes)
    batch_size: int
    enqueued_ns: int
    payload: Any = None
    level: int = 0  # index into the queue's levels (0 = highest priority)
    deadline_ns: int | None = None
    delayed: bool = False  # timed out under DELAY: served after every request that has not
    seq: int = 0


@dataclass
class _Level:
    policy: QueuePolicy
    items: deque[Pending] = field(default_factory=deque)


class RequestQueue:
    def __init__(
        self,
        priority_levels: int = 0,
        default_priority_level: int = 0,
        default_policy: QueuePolicy | None = None,
        level_policies: dict[int, QueuePolicy] | None = None,
    ) -> None:
        count = max(1, priority_levels)
        default_policy = default_policy or QueuePolicy()
        level_policies = level_policies or {}
        self.levels = [_Level(level_policies.get(i + 1, default_policy)) for i in range(count)]
        self.priority_levels = priority_levels
        if priority_levels == 0:
            self.default_level = 0
        else:
            default = default_priority_level or priority_levels  # unset: the lowest priority
            if not 1 <= default <= priority_levels:
                raise ModelConfigError(
                    f"default_priority_level {default} must be between 1 and priority_levels {priority_levels}"
                )
            self.default_level = default - 1
        self._seq = 0

    @classmethod
    def from_config(cls, batching: model_config_pb2.ModelDynamicBatching) -> RequestQueue:
        levels = {k: QueuePolicy.from_config(v) for k, v in batching.priority_queue_policy.items()}
        default = (
            QueuePolicy.from_config(batching.default_queue_policy)
            if batching.HasField("default_queue_policy")
            else QueuePolicy()
        )
        return cls(batching.priority_levels, batching.default_priority_level, default, levels)

    def __len__(self) -> int:
        return sum(len(level.items) for level in self.levels)

    def level_for(self, priority: int) -> int:
        """Queue index for a request's ``priority`` parameter (0 or absent: the default level)."""
        if priority == 0:
            return self.default_level
        if self.priority_levels == 0:
            return 0
        if priority < 0 or priority > self.priority_levels:
            raise InvalidArgumentError(
                f"priority {priority} is out of range: the model has priority levels 1..{self.priority_levels}"
            )
        return priority - 1

    def timeout_ns(self, level: int, requested_us: int | None) -> int | None:
        policy = self.levels[level].policy
        timeout_us = policy.default_timeout_us
        if requested_us is not None and policy.allow_timeout_override:
            timeout_us = requested_us
        return timeout_us * 1000 if timeout_us > 0 else None

    def put(self, item: Pending, now_ns: int, timeout_us: int | None = None) -> None:
        """Queue ``item`` at its level, or refuse at once when that level is full."""
        level = self.levels[item.level]
        if level.policy.max_queue_size and len(level.items) >= level.policy.max_queue_size:
            raise UnavailableError(
                f"Exceeds maximum queue size: the queue for priority level {item.level + 1} is full "
                f"(max_queue_size {level.policy.max_queue_size})"
            )
        timeout = self.timeout_ns(item.level, timeout_us)
        item.deadline_ns = now_ns + timeout if timeout is not None else None
        item.seq = self._seq
        self._seq += 1
        level.items.append(item)

    def remove(self, items: Iterable[Pending]) -> None:
        for item in items:
            try:
                self.levels[item.level].items.remove(item)
            except ValueError:
                pass

    def expire(self, now_ns: int) -> list[Pending]:
        """Apply timeouts: REJECT removes and returns the expired requests, DELAY marks them delayed."""
        rejected = []
        for level in self.levels:
            for item in list(level.items):
                if item.deadline_ns is None or item.deadline_ns > now_ns or item.delayed:
                    continue
                if level.policy.timeout_action is TimeoutAction.REJECT:
                    level.items.remove(item)
                    rejected.append(item)
                else:
                    item.delayed = True
        return rejected

    def next_deadline(self) -> int | None:
        deadlines = [
            i.deadline_ns
            for lvl in self.levels
            for i in lvl.items
            if i.deadline_ns is not None and not i.delayed
        ]
        return min(deadlines) if deadlines else None

    def ordered(self) -> list[Pending]:
        """Service order: by priority level, requests that have not timed out before delayed ones, then FIFO."""
        fresh = [i for lvl in self.levels for i in lvl.items if not i.delayed]
        late = [i for lvl in self.levels for i in lvl.items if i.delayed]
        return fresh + late

    def form_batch(self, max_batch_size: int) -> list[Pending]:
        """The next batch: the first request in service order plus every later compatible request that fits."""
        order = self.ordered()
        if not order:
            return []
        head = order[0]
        batch, total = [head], head.batch_size
        for item in order[1:]:
            if total >= max_batch_size:
                break
            if item.key == head.key and total + item.batch_size <= max_batch_size:
                batch.append(item)
                total += item.batch_size
        return batch
