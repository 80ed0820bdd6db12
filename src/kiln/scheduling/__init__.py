"""Schedulers between the core and a model's instances: direct (one request per execution) or dynamic batching."""

from kiln.scheduling.batcher import Batch, DirectScheduler, DynamicBatcher, Scheduler, Work, make_scheduler
from kiln.scheduling.queue import Pending, QueuePolicy, RequestQueue, TimeoutAction

__all__ = [
    "Batch",
    "DirectScheduler",
    "DynamicBatcher",
    "Pending",
    "QueuePolicy",
    "RequestQueue",
    "Scheduler",
    "TimeoutAction",
    "Work",
    "make_scheduler",
]
