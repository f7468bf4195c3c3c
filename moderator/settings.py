"""All configuration, from MODERATOR_* environment variables (CLI flags override)."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SHIPPED_POLICIES = Path(__file__).resolve().parent.parent / "policies"


def default_database_url() -> str:
    data = Path(user_data_dir("moderator", appauthor=False))
    return f"sqlite:///{data / 'moderator.db'}"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Precision(StrEnum):
    AUTO = "auto"  # fp16 on CUDA, fp32 on CPU
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # dynamic int8 quantisation of linear layers (CPU)


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
    batch_size: int = Field(16, ge=1, le=4096, description="Images per model batch.")
    decode_workers: int = Field(0, ge=0, le=256, description="Threads decoding images; 0 picks from the CPU count.")
    policies: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [SHIPPED_POLICIES],
        description=(
            "Policy folders or files (the shipped policies/ by default); in the environment one path, several"
            " separated by ':' (os.pathsep), or a JSON list."
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
    max_frames: int = Field(
        4,
        ge=1,
        le=64,
        description=("Frames sampled from animated images; the worst score over them is kept."),
    )
    onnx_threads: int = Field(
        0,
        ge=0,
        le=256,
        description=("Intra-op threads of onnxruntime models (open_nsfw); 0 lets onnxruntime pick from the CPU count."),
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

    @field_validator("policies", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    def policy_paths(self) -> list[Path]:
        return list(self.policies)
