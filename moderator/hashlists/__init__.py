"""Known-bad hash lists: PDQ, MD5, SHA-256 (and the older pHash), in the formats people exchange.

- entries.py: the list file (one hash a line, with provenance: source, tags, label), reading a
  policy's lists, the content digest that makes stored results stale when a list changes.
- signals.py: computing PDQ (Meta's pdqhash, with its quality), pHash, MD5, SHA-256; distances.
- index.py: exact search within a Hamming distance at the size of real lists (faiss).
- build.py: `hashlist add` (images -> entries) and where a list NAME lives.
- formats.py: import/export: plain, threatexchange's CSV, threatexchange's text and .te files.
- exchange.py: NCMEC / StopNCII records (threatexchange's exchange clients) -> entries.

Where lists live: a policy names its lists relative to its file (``lists/known_bad.txt``);
the lists you add to live in your data directory (``MODERATOR_HASH_LISTS_DIR``), never in
the installed package, and a policy's ``lists/NAME.txt`` reads ``NAME.txt`` from there too.
"""

from __future__ import annotations

from moderator.hashlists.build import (
    DEFAULT_ADD_KINDS,
    IMAGE_SUFFIXES,
    AddReport,
    add_images,
    image_entries,
    iter_image_files,
    resolve_list_path,
)
from moderator.hashlists.entries import (
    DEFAULT_MAX_DISTANCE,
    HEX_LEN,
    PERCEPTUAL_BITS,
    HashEntry,
    HashKind,
    HashList,
    HashListError,
    append_entries,
    format_entry,
    list_paths,
    lists_digest,
    load_hash_list,
    parse_hash_list,
    policy_lists,
)
from moderator.hashlists.index import HammingIndex, Hit
from moderator.hashlists.signals import (
    PDQ_MIN_QUALITY,
    PHASH_BITS,
    Pdq,
    codes,
    exact_hex,
    hamming,
    hamming_codes,
    pdq_of,
    phash_array,
    phash_hex,
)

__all__ = [
    "DEFAULT_ADD_KINDS",
    "DEFAULT_MAX_DISTANCE",
    "HEX_LEN",
    "IMAGE_SUFFIXES",
    "PDQ_MIN_QUALITY",
    "PERCEPTUAL_BITS",
    "PHASH_BITS",
    "AddReport",
    "HammingIndex",
    "HashEntry",
    "HashKind",
    "HashList",
    "HashListError",
    "Hit",
    "Pdq",
    "add_images",
    "append_entries",
    "codes",
    "exact_hex",
    "format_entry",
    "hamming",
    "hamming_codes",
    "image_entries",
    "iter_image_files",
    "list_paths",
    "lists_digest",
    "load_hash_list",
    "parse_hash_list",
    "pdq_of",
    "phash_array",
    "phash_hex",
    "policy_lists",
    "resolve_list_path",
]
