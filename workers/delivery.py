"""Per-task bookkeeping in Redis (the broker): deliveries counted, job counts made once.

Celery's `delivery_info['redelivered']` is not reliable on the Redis transport, so each
delivery increments a counter of its own. Keys expire after a week.
"""

from __future__ import annotations

from functools import cache

import redis

from moderator.settings import Settings

PREFIX = "moderator:task:"
TTL_S = 7 * 24 * 3600


class Deliveries:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    @cache
    def _for_url(url: str) -> Deliveries:
        return Deliveries(redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10))

    @classmethod
    def for_settings(cls, settings: Settings) -> Deliveries:
        return cls._for_url(settings.broker_url)

    def started(self, task_id: str, retries: int) -> int:
        """This delivery's number (1 for the first) of this task at this retry."""
        key = f"{PREFIX}{task_id}:{retries}:deliveries"
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, TTL_S)
        count, _ = pipe.execute()
        return int(count)

    def first_count(self, task_id: str) -> bool:
        """True unless this task's counts are already in its job (a redelivery after the write)."""
        return not self.client.exists(f"{PREFIX}{task_id}:counted")

    def mark_counted(self, task_id: str) -> None:
        # After the database write: a crash in between counts a batch twice (visible, done >= total)
        # rather than never (a job that cannot finish).
        self.client.set(f"{PREFIX}{task_id}:counted", 1, ex=TTL_S)
