"""All configuration, from MODERATOR_* environment variables (CLI flags override)."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Package data, so every install has them; the repository's policies/ folder is a link to it.
SHIPPED_POLICIES = Path(str(files("moderator").joinpath("shipped_policies")))


def user_data() -> Path:
    return Path(user_data_dir("moderator", appauthor=False))


def default_database_url() -> str:
    return f"sqlite:///{user_data() / 'moderator.db'}"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(StrEnum):
    AUTO = "auto"  # fp16 on CUDA, fp32 on CPU
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # dynamic int8 quantisation of linear layers (CPU)


class Backend(StrEnum):
    AUTO = "auto"  # onnx on CPU, torch on CUDA
    TORCH = "torch"
    ONNX = "onnx"  # ONNX Runtime, CPU only


class Settings(BaseSettings):
    """Every setting, documented; `tests/test_settings.py` fails on an undocumented one."""

    model_config = SettingsConfigDict(env_prefix="MODERATOR_", extra="forbid")

    database_url: str = Field(
        default_factory=default_database_url,
        description=("SQLAlchemy URL of the store (SQLite file by default, postgresql+psycopg://... in production)."),
    )
    model: str = Field("ViT-B-32", description="open_clip model name (or test-tiny for tests).")
    pretrained: str = Field(
        "laion2b_s34b_b79k",
        description=(
            "open_clip pretrained tag, a local checkpoint path, hf-hub:ORG/NAME (offline HF cache), or 'none' for"
            " random weights (benchmarks only)."
        ),
    )
    device: Device = Field(Device.AUTO, description="auto (CUDA when present), cpu or cuda.")
    precision: Precision = Field(Precision.AUTO, description="auto, fp32, fp16 or int8.")
    backend: Backend = Field(
        Backend.AUTO,
        description=(
            "CLIP inference engine: auto (ONNX Runtime on CPU, PyTorch on CUDA), torch, or onnx (CPU only); an"
            " architecture that does not export to ONNX runs on PyTorch."
        ),
    )
    onnx_cache_dir: Path | None = Field(
        None,
        description=("Folder of the exported ONNX graphs of CLIP models; unset: 'onnx' in the user cache dir."),
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Images per model batch.")
    decode_workers: int = Field(
        0, ge=0, le=256, description="Decode worker processes (and source-reading threads); 0 picks from the CPU count."
    )
    policies: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [SHIPPED_POLICIES],
        description=(
            "Policy folders or files (the shipped policies/ by default); in the environment one path, several"
            " separated by ':' (os.pathsep), or a JSON list."
        ),
    )
    hash_lists_dir: Path = Field(
        default_factory=lambda: user_data() / "lists",
        description=(
            "Folder of your known-bad hash lists (the user data dir by default): `moderator hashlist add --list NAME`"
            " writes NAME.txt here when the policies are the shipped ones, and a policy's list lists/NAME.txt is"
            " read beside the policy file and from here."
        ),
    )
    max_image_pixels: int = Field(
        89_478_485,
        ge=1,
        description=("Images with more pixels are refused as decompression bombs before their pixels are read."),
    )
    max_image_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description=("Files larger than this are recorded as errors without being read."),
    )
    archive_max_members: int = Field(
        1_000_000,
        ge=1,
        description=(
            "Members read from one archive, those of archives inside it included; past it the rest is one"
            " recorded error."
        ),
    )
    max_frames: int = Field(
        4,
        ge=1,
        le=64,
        description=("Frames sampled from animated images; the worst score over them is kept."),
    )
    decode_memory_mb: int = Field(
        2048,
        ge=64,
        le=1 << 20,
        description=(
            "Memory (MB of address space, beyond what it starts with) each decode worker process may use; a file "
            "that needs more is recorded as too_large."
        ),
    )
    decode_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "Seconds one file may take to decode in a decode worker process before it is stopped and recorded as "
            "decode_timeout."
        ),
    )
    gpu_decode: bool = Field(
        True,
        description=(
            "Decode JPEGs on the GPU (nvJPEG, in batches) when the CLIP model runs on CUDA; other formats and files"
            " the GPU decoder refuses are decoded on the CPU, under the same limits."
        ),
    )
    onnx_threads: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "Intra-op threads of onnxruntime models (CLIP on the onnx backend, open_nsfw); 0 lets onnxruntime pick"
            " from the CPU count."
        ),
    )
    broker_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description=("Celery broker URL for `moderator enqueue` and `moderator worker`."),
    )
    s3_max_attempts: int = Field(
        5,
        ge=1,
        le=20,
        description=(
            "Attempts per S3/SQS request (the first included) before giving up; throttling and 5xx are retried "
            "with backoff."
        ),
    )
    s3_retry_mode: Literal["standard", "adaptive"] = Field(
        "standard",
        description=(
            "botocore retry mode: standard (exponential backoff) or adaptive (also rate-limits the client when "
            "throttled)."
        ),
    )
    s3_page_size: int = Field(
        1000,
        ge=1,
        le=1000,
        description=("Keys per S3 listing request; listings stream page by page."),
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description=(
            "Shared secret of POST /hooks/s3 (header Authorization: Bearer <secret>); unset: the webhook refuses "
            "every request."
        ),
    )
    s3_event_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Buckets or bucket/prefix entries (s3://bucket/prefix too) whose S3 events the webhook and the SQS"
            " listener act on; other events are refused and counted. In the environment: comma-separated or a"
            " JSON list. Empty: events of every bucket."
        ),
    )
    api_scan_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Folders and s3://bucket/prefix roots that POST /api/scans may enqueue (admins only); a target outside"
            " them is refused without saying whether it exists. In the environment: comma-separated or a JSON"
            " list. Empty: the API enqueues nothing (use `moderator enqueue`)."
        ),
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Addresses of reverse proxies whose X-Forwarded-For/-Proto `moderator serve` believes (uvicorn's"
            " forwarded_allow_ips); comma-separated or a JSON list. Empty: forwarded headers are ignored and the"
            " peer address counts for the login rate limit."
        ),
    )
    session_idle_minutes: int = Field(
        30,
        ge=1,
        le=7 * 24 * 60,
        description=("Review UI sessions expire after this many minutes without a request."),
    )
    secure_cookies: bool = Field(
        False,
        description=(
            "Always mark session cookies Secure (behind a TLS-terminating proxy); they are Secure anyway when the"
            " request came over HTTPS."
        ),
    )
    metrics_token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token that may read /metrics without a login (admins may read it too); unset: admins only."
        ),
    )
    login_max_failures: int = Field(
        5,
        ge=1,
        description=(
            "Failed logins allowed per username and client address within login_lockout_minutes before further "
            "tries are refused."
        ),
    )
    login_lockout_minutes: int = Field(
        15,
        ge=1,
        description=("Window (minutes) over which failed logins are counted for the rate limit."),
    )
    thumbnail_size: int = Field(
        768,
        ge=64,
        le=4096,
        description=("Longest side (pixels) of the re-encoded images the review UI serves."),
    )

    queue_name: str = Field(
        "moderator",
        min_length=1,
        description=("Celery queue that `moderator enqueue` sends batches to and `moderator worker` consumes."),
    )
    queue_batch_size: int = Field(
        64,
        ge=1,
        le=10_000,
        description=(
            "Item references per queued task (each worker batch); keep one batch well under the task time limit."
            " On GPU workers use 256 or more: a task pays a fixed start-up (measured on an H200: queued/in-process"
            " 0.64 at 64, 0.90 at 256)."
        ),
    )
    visibility_timeout: int = Field(
        300,
        ge=10,
        le=86_400,
        description=(
            "Seconds before Redis hands an unacknowledged batch to another worker (a killed worker's batch is "
            "redone after this); task time limits are set to 80% (soft) and 90% (hard) of it."
        ),
    )
    max_deliveries: int = Field(
        3,
        ge=1,
        le=100,
        description=(
            "Deliveries of a batch that kill its worker before its items are tried one by one; an item that kills"
            " the worker this many times is quarantined as an error."
        ),
    )
    task_max_retries: int = Field(
        8,
        ge=0,
        le=100,
        description=(
            "Retries (exponential backoff, capped at a quarter of visibility_timeout) of a batch after a "
            "transient database, S3 or broker error."
        ),
    )
    queue_repair_interval: int = Field(
        60,
        ge=0,
        le=3600,
        description=(
            "Seconds between a worker's checks for batches the broker lost (e.g. Redis restarted without"
            " persistence): a job's batch neither queued nor taken is sent again; 0 turns the check off."
        ),
    )
    worker_metrics_port: int = Field(
        9808,
        ge=0,
        le=65_535,
        description=("Port where `moderator worker` serves Prometheus metrics (/metrics); 0 turns it off."),
    )
    worker_imports: list[str] = Field(
        default_factory=list,
        description=(
            "Extra Python modules every worker imports at start (e.g. to register source or scorer plugins not "
            "installed as entry points)."
        ),
    )

    # issue 14: synchronous verdicts, POST /api/moderate
    moderate_api: bool = Field(
        True,
        description=(
            "Serve POST /api/moderate: `moderator serve` loads the policies and models when it starts; false: the"
            " route answers 503 and nothing is loaded."
        ),
    )
    moderate_batch_window_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description=(
            "Milliseconds POST /api/moderate waits after a request for others to join its model batch (concurrent"
            " requests are scored in one model call)."
        ),
    )
    moderate_max_batch: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Most requests of POST /api/moderate scored in one batch; unset: batch_size.",
    )
    moderate_max_pending: int = Field(
        256,
        ge=1,
        le=100_000,
        description=(
            "Requests POST /api/moderate holds at once (waiting or being scored); more answer 503 with Retry-After"
            " instead of queueing without bound."
        ),
    )
    moderate_max_bytes: int = Field(
        33_554_432,
        ge=1,
        description=(
            "Largest image (bytes) POST /api/moderate accepts, checked while the body streams in, before anything"
            " is decoded; larger answers 413."
        ),
    )
    moderate_workers: int = Field(
        2,
        ge=1,
        le=16,
        description=(
            "Threads of POST /api/moderate scoring batches, each with its own compiled policies (the model is"
            " shared and its calls take turns): with 2, one batch is read and decoded while another is in the model."
        ),
    )
    moderate_uri_roots: list[str] = Field(
        default_factory=list,
        description=(
            "s3://bucket/prefix roots (or folders) whose objects POST /api/moderate may read when the body names a"
            " uri; others are refused. Comma-separated or a JSON list. Empty: uri bodies are refused."
        ),
    )

    # issue 14: S3 actions on decisions (moderator/actions/s3.py)
    s3_actions: Path | None = Field(
        None,
        description=(
            "YAML or JSON file of rules for acting on s3:// items when their decision is made or changes: tag the"
            " object and/or move it to a quarantine bucket (docs/s3.md, 'Acting on decisions'); unset: S3 objects"
            " are never written to."
        ),
    )

    # issue 14 (B): decision webhooks and `moderator deliver`
    webhook_allow_private: bool = Field(
        False,
        description=(
            "Allow webhook endpoint URLs on private, loopback and link-local addresses (refused by default: an"
            " endpoint URL could otherwise reach internal services)."
        ),
    )
    webhook_retry_for_s: float = Field(
        86_400.0,
        gt=0,
        description=(
            "Seconds a failing webhook delivery is retried (exponential backoff with jitter) before it is marked"
            " failed and left for `moderator webhooks replay`."
        ),
    )
    webhook_backoff_s: float = Field(
        5.0, gt=0, description="Delay before the first retry of a failed delivery; it doubles with each attempt."
    )
    webhook_backoff_max_s: float = Field(3_600.0, gt=0, description="Longest delay between two delivery attempts.")
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="Timeout of one webhook request (connect and read), in seconds."
    )
    webhook_concurrency: int = Field(
        4,
        ge=1,
        le=256,
        description=(
            "Deliveries in flight per endpoint and deliverer; a slow or dead endpoint takes at most this many of"
            " the deliverer's threads, so the others are not delayed."
        ),
    )
    deliver_poll_s: float = Field(
        1.0, gt=0, description="Seconds `moderator deliver` waits between looks at the outbox when idle."
    )

    # issue 16 (E): video (PyAV) sampling and limits
    video_frames: int = Field(
        8,
        ge=1,
        le=64,
        description=(
            "Frames sampled evenly over a video's duration, besides its first frame; the worst one decides and"
            " its timestamp is the evidence."
        ),
    )
    video_max_seconds: float = Field(
        3_600.0,
        gt=0,
        description=(
            "Longer videos (by their header, or by their packets whatever the header says) are recorded as"
            " video_too_long without being decoded."
        ),
    )
    video_max_frames: int = Field(
        250_000,
        ge=1,
        description=(
            "Videos with more frames (by their header or by their packets) are recorded as too_many_frames without"
            " being decoded."
        ),
    )

    # issue 16 (D): hash lists (PDQ quality cut-off, NCMEC fetching through threatexchange)
    hashlist_pdq_min_quality: int = Field(
        50,
        ge=0,
        le=100,
        description=(
            "PDQ quality (0-100) below which a frame's PDQ is too unreliable to match on (flat, near-blank images):"
            " recorded as pdq_low_quality, never matched; `hashlist add` leaves such PDQs out. 50 is threatexchange's."
        ),
    )
    hashlist_ncmec_environment: str = Field(
        "Industry",
        description=(
            "NCMEC hash-sharing database `moderator hashlist fetch --exchange ncmec` reads (a threatexchange"
            " NCMECEnvironment name: Industry, Industry_Exploitative, LawEnforcement, NGO, Exploitative)."
        ),
    )
    hashlist_ncmec_esp_ids: list[int] = Field(
        default_factory=list,
        description="Only NCMEC entries from these members (ESP ids, a JSON list); empty: every member's.",
    )

    # issue 18: review work (leases, undo, hash list from a block; moderator/review/leases.py, appeals.py)
    review_lease_s: int = Field(
        300,
        ge=10,
        le=86_400,
        description="How long opening or claiming a content holds it for a reviewer (renewed while the page is open).",
    )
    review_undo_s: int = Field(
        600, ge=0, le=86_400, description="For how long after a decision its reviewer may undo it (0: never)."
    )
    review_hash_list: str = Field(
        "known_bad",
        min_length=1,
        max_length=255,
        description=(
            "The hash list a reviewer's block adds a content to when asked (a list NAME as `hashlist add --list`"
            " takes it): known_bad is the one the shipped known_bad and known_bad_similar policies read."
        ),
    )

    # issue 17 (search at scale): the on-disk approximate search index (moderator/engine/ann.py)
    search_index_dir: Path | None = Field(
        None,
        description=(
            "Folder of the approximate search index (one sub-folder per model; memory-mapped, shared by every"
            " process on the machine). Default: `<store file>.search/` next to a SQLite store, else"
            " `search-index/` in the user data folder."
        ),
    )
    search_exact_below: int = Field(
        50_000,
        ge=0,
        description=(
            "Stores with fewer embeddings of a model than this are searched exactly (no index on disk); larger"
            " ones through the approximate index (`moderator search --reindex` builds it; built on first use)."
        ),
    )
    search_quantization: Literal["f16", "i8", "f32"] = Field(
        "f16", description="How the approximate index stores vectors (i8 halves its size, at some recall)."
    )
    search_expansion: int = Field(
        128,
        ge=16,
        le=4096,
        description="HNSW candidates looked at per query (more: better recall, slower); recall@20 >= 0.95 at 128.",
    )
    search_delta_max: int = Field(
        20_000,
        ge=100,
        description=(
            "Embeddings newer than the index kept searched exactly in memory; past it they are added to the index"
            " on disk as a new segment (under a file lock, swapped in atomically)."
        ),
    )

    @field_validator("policies", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("s3_event_allow", "api_scan_roots", "trusted_proxies", "moderate_uri_roots", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def policy_paths(self) -> list[Path]:
        return list(self.policies)
