"""Which failures are worth a retry (they may pass) and which are final."""

from __future__ import annotations

# Names rather than imports: botocore, redis and kombu need not be importable for this check.
_TRANSIENT_BY_MODULE = {
    "sqlalchemy.exc": {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"},
    "psycopg": {"OperationalError", "InterfaceError"},
    "botocore.exceptions": {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionError",
        "ProxyConnectionError",
        "HTTPClientError",
    },
    "redis.exceptions": {"ConnectionError", "TimeoutError", "BusyLoadingError"},
    "kombu.exceptions": {"OperationalError"},
}
# S3 answers that mean "try again later"; other ClientErrors (403, 404) are final.
_TRANSIENT_S3_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "500",
    "502",
    "503",
    "504",
}


def is_transient(exc: BaseException) -> bool:
    """True for connection-level failures of the database, S3 or the broker."""
    for cls in type(exc).__mro__:
        module = cls.__module__
        names = next((v for k, v in _TRANSIENT_BY_MODULE.items() if module == k or module.startswith(k + ".")), None)
        if names and cls.__name__ in names:
            return True
        if module.startswith("botocore") and cls.__name__ == "ClientError":
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            return code in _TRANSIENT_S3_CODES
    return isinstance(exc, ConnectionError | TimeoutError)
