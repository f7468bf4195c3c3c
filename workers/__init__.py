"""Celery workers: the queue side of moderator (celery_app: configuration; tasks: thin wrappers on the pipeline)."""
