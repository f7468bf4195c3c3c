"""S3 event notifications, one slice: parse (JSON -> S3Event), ordering (sequencer state),
handler (created -> enqueued by uri, removed -> marked deleted) and sqs (the SQS listener).

Used by `moderator listen` and the webhook (review); sends scans through moderator.queue.
"""
