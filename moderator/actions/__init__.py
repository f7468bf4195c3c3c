"""Acting on decisions: decision events and their consumers ("action performers").

events.py      the Event model (item.decided, review.decided): the contract receivers see
performers.py  the Performer protocol and registry: webhook endpoints are one kind, S3 actions another
webhooks.py    the webhook performer: endpoint filters, address checks, Standard Webhooks signing
deliver.py     the Deliverer (`moderator deliver`, and a thread of `moderator serve`)

Events are written by the store (store/outbox.py) in the transaction that changes a decision;
the ledger of deliveries is store/deliveries.py. To add a consumer, write a Performer (see
performers.py: `targets(event)` and an idempotent `perform(target, event)`) and register it:
add it to performers.BUILTIN or call performers.register_performer(kind, factory). The
deliverer then fans every new event out to it with the same leases, retries and ordering.
"""
