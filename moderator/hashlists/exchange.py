"""Lists from hash-sharing programmes (NCMEC, StopNCII) through threatexchange's exchange clients.

threatexchange fetches (its SignalExchangeAPI.fetch_iter, with the programme's HTTP API and its
paging), merges the updates (fetch_value_merge: deletions and withdrawn cases drop out) and
converts them to signals (naive_convert_to_signal_type); this module maps those signals to list
entries: the kind from the signal type, tags from the members' aggregate opinion, the source
naming the programme and collaboration. Signals a member marked NEGATIVE_CLASS are left out.

Credentials are threatexchange's: `TX_NCMEC_CREDENTIALS=user:password` (or ~/.tx_ncmec_credentials)
and `TX_STOPNCII_KEYS=fetch_function_key,subscription_key[,base_url]` (or ~/.tx_stopncii_keys).
Which NCMEC database: MODERATOR_HASHLIST_NCMEC_ENVIRONMENT; which members' entries:
MODERATOR_HASHLIST_NCMEC_ESP_IDS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from moderator.hashlists.entries import HashEntry
from moderator.settings import Settings

EXCHANGES = ("ncmec", "stopncii")


class ExchangeError(RuntimeError):
    """A programme that cannot be fetched from (no credentials, a refused request): one line."""


def signal_types() -> list[Any]:
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from threatexchange.signal_type.sha256 import VideoSHA256Signal

    return [PdqSignal, VideoMD5Signal, VideoSHA256Signal]


def entries_from_signals(converted: Mapping[Any, Mapping[str, Any]], source: str) -> list[HashEntry]:
    """threatexchange's {SignalType: {signal: FetchedSignalMetadata}} as entries, sorted."""
    from threatexchange.exchanges.fetch_state import AggregateSignalOpinionCategory

    from moderator.hashlists.formats import category_tags, signal_kinds

    entries = []
    for signal_type, signals in converted.items():
        kind = signal_kinds().get(signal_type.get_name())
        if kind is None:
            continue
        for value, metadata in signals.items():
            opinion = metadata.get_as_aggregate_opinion()
            if opinion.category is AggregateSignalOpinionCategory.NEGATIVE_CLASS:
                continue
            tags = category_tags(opinion.category.name, sorted(opinion.tags))
            entries.append(HashEntry(kind, value.lower(), "", 0, source, tags))
    return sorted(entries, key=lambda e: (e.kind, e.value))


def ncmec_collab(settings: Settings) -> Any:
    from threatexchange.exchanges.clients.ncmec.hash_api import NCMECEnvironment
    from threatexchange.exchanges.impl.ncmec_api import NCMECCollabConfig

    try:
        environment = NCMECEnvironment[settings.hashlist_ncmec_environment]
    except KeyError:
        known = ", ".join(e.name for e in NCMECEnvironment)
        raise ExchangeError(f"unknown NCMEC environment {settings.hashlist_ncmec_environment!r} ({known})") from None
    name = f"ncmec:{environment.name}"
    return NCMECCollabConfig(name=name, environment=environment, only_esp_ids=set(settings.hashlist_ncmec_esp_ids))


def ncmec_entries(updates: Mapping[str, Any], settings: Settings) -> list[HashEntry]:
    """NCMEC entry updates (threatexchange's NCMECEntryUpdate by entry id, merged) as list entries."""
    from threatexchange.exchanges.impl.ncmec_api import NCMECSignalExchangeAPI

    collab = ncmec_collab(settings)
    # threatexchange validates hex as lower case only: an upper-case fingerprint is the same hash
    lowered = {
        k: replace(u, fingerprints={t: v.lower() for t, v in u.fingerprints.items()}) for k, u in updates.items()
    }
    converted = NCMECSignalExchangeAPI.naive_convert_to_signal_type(signal_types(), collab, lowered)
    return entries_from_signals(converted, collab.name)


def stopncii_entries(updates: Mapping[tuple[str, str], Any]) -> list[HashEntry]:
    """StopNCII updates ((signal type, hash) -> StopNCIISignalMetadata, merged) as list entries."""
    from threatexchange.exchanges.collab_config import CollaborationConfigBase
    from threatexchange.exchanges.impl.stop_ncii_api import StopNCIISignalExchangeAPI

    collab = CollaborationConfigBase(name="stopncii", api="stopncii", enabled=True)
    converted = StopNCIISignalExchangeAPI.naive_convert_to_signal_type(signal_types(), collab, updates)
    return entries_from_signals(converted, "stopncii")


def fetch_entries(exchange: str, settings: Settings) -> list[HashEntry]:
    """Every current entry of a programme, fetched from the start (network; credentials above)."""
    from threatexchange.exchanges.auth import (
        SignalExchangeAPIInvalidAuthException,
        SignalExchangeAPIMissingAuthException,
    )

    try:
        if exchange == "ncmec":
            from threatexchange.exchanges.impl.ncmec_api import NCMECSignalExchangeAPI

            ncmec = NCMECSignalExchangeAPI.for_collab(ncmec_collab(settings))
            return ncmec_entries(_merged(ncmec, signal_types()), settings)
        if exchange == "stopncii":
            from threatexchange.exchanges.collab_config import CollaborationConfigBase
            from threatexchange.exchanges.impl.stop_ncii_api import StopNCIISignalExchangeAPI

            collab = CollaborationConfigBase(name="stopncii", api="stopncii", enabled=True)
            stopncii = StopNCIISignalExchangeAPI.for_collab(collab)
            return stopncii_entries(_merged(stopncii, signal_types()))
    except SignalExchangeAPIMissingAuthException as e:
        raise ExchangeError(f"{exchange}: no credentials; fix it by {' or '.join(e.hints)}") from None
    except SignalExchangeAPIInvalidAuthException as e:
        raise ExchangeError(f"{exchange}: {e.message}") from None
    except OSError as e:  # requests' errors are OSErrors: a refused or failed request
        raise ExchangeError(f"{exchange}: {e}") from None
    raise ExchangeError(f"unknown exchange {exchange!r} ({', '.join(EXCHANGES)})")


def _merged(api: Any, types: Sequence[Any]) -> dict[Any, Any]:
    state: dict[Any, Any] = {}
    for delta in api.fetch_iter(types, None):
        api.naive_fetch_merge(state, delta.updates)
    return state
