"""Celery workers: the queue side of moderator (celery_app: the app; tasks: the one task, thin on the pipeline;
runtime: what a worker process keeps; repair: the loop that re-sends what the broker lost).

Producers (moderator.queue) never import this package: they send the task by name.
"""
