"""Schedulers between the core and a model's instances: direct (one request per execution) or dynamic batching.

Both run a batch in the backend's own shape (merged tensors or per request) and answer through each request's
:class:`ResponseSender`; neither knows about transports or runtimes.
"""

from kiln.scheduling.base import Scheduler, Target, merge, split
from kiln.scheduling.direct import DirectScheduler
from kiln.scheduling.dynamic import BatcherOptions, DynamicBatcher, batch_key, make_scheduler
from kiln.scheduling.queue import Pending, QueuePolicy, RequestQueue, TimeoutAction
from kiln.scheduling.work import Batch, Reply, ResponseSender, Work

__all__ = [
    "Batch",
    "BatcherOptions",
    "DirectScheduler",
    "DynamicBatcher",
    "Pending",
    "QueuePolicy",
    "Reply",
    "RequestQueue",
    "ResponseSender",
    "Scheduler",
    "Target",
    "TimeoutAction",
    "Work",
    "batch_key",
    "make_scheduler",
    "merge",
    "split",
]
