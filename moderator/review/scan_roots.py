"""Which scan targets the API may enqueue: only under the operator's `api_scan_roots` (pure).

A local target must be an absolute path whose real path (symlinks resolved, whether or not
it exists) lies under a root's real path; an S3 target must name a root's bucket and start
with its key prefix (literally, as S3 prefixes match). Nothing else is allowed, and the
answer never depends on whether a path outside the roots exists.
"""

from __future__ import annotations

import os

S3 = "s3://"


def _s3_parts(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix(S3).partition("/")
    return bucket, key


def _under_s3(target: str, root: str) -> bool:
    bucket, key = _s3_parts(target)
    root_bucket, prefix = _s3_parts(root)
    return bool(bucket) and bucket == root_bucket and key.startswith(prefix)


def _under_folder(target: str, root: str) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(target)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def target_allowed(target: str, roots: list[str]) -> bool:
    if target.startswith(S3):
        return any(root.startswith(S3) and _under_s3(target, root) for root in roots)
    if "://" in target or "\x00" in target or not os.path.isabs(target):
        return False
    return any(not root.startswith(S3) and os.path.isabs(root) and _under_folder(target, root) for root in roots)
