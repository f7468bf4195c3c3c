"""The producer side of the job queue: tasks are sent by name, worker code (workers/) is never imported.

config: TASK_NAME and the Celery configuration both sides share; enqueue: a job's batches
listed, ledgered and sent; repair: batches the broker lost, found and sent again.
"""

from moderator.queue.config import TASK_NAME, celery_config, producer_app, retry_countdown, time_limits
from moderator.queue.enqueue import EnqueueError, ItemRef, check_policies, enqueue_targets, publish, task_payload

__all__ = [
    "TASK_NAME",
    "EnqueueError",
    "ItemRef",
    "celery_config",
    "check_policies",
    "enqueue_targets",
    "producer_app",
    "publish",
    "retry_countdown",
    "task_payload",
    "time_limits",
]
