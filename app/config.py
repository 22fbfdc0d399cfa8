"""Settings of the service, read once from ``NNSERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of the service; ``python -m app`` flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="NNSERVE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    workers: int = Field(1, ge=1, le=64, description="Worker processes.")
    model_dir: Path | None = Field(
        None, description="Folder of *.joblib artifacts; unset serves the shipped models."
    )
    default_model: str | None = Field(
        None,
        description='Model of POST /predict without "model"; unset: "digits-mlp" if loaded, '
        "else the first name in order.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or JSON.")
    max_batch: int = Field(1024, ge=1, description="Most samples in one request.")
    max_body_bytes: int = Field(8 * MiB, ge=1, description="Largest request body (413 above).")
    api_key: str | None = Field(
        None, description="When set, predict and infer need `Authorization: Bearer <key>`."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Origins allowed by CORS: comma-separated or a JSON list; "*" allows any.',
    )
    graceful_timeout: float = Field(
        10.0, gt=0, description="Seconds in-flight requests get to finish after SIGTERM."
    )
    keep_alive_timeout: int = Field(
        5, ge=1, description="Seconds an idle keep-alive connection stays open."
    )
    read_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client may take to send a request head, or pause inside a "
        "body, before the connection is closed (408).",
    )
    batch_max_size: int = Field(
        1,
        ge=1,
        description="Adaptive batching: most samples merged into one forward pass from "
        "concurrent requests for the same model (1: off). A request this large or larger "
        "runs alone.",
    )
    batch_max_delay_ms: float = Field(
        0.0,
        ge=0,
        description="Adaptive batching: longest wait, in milliseconds, for other requests to "
        "merge with (0: off).",
    )
    explain_max_work: int = Field(
        16384,
        ge=1,
        description="Most gradient evaluations in one explanation: samples for "
        '"gradient", samples x steps for "integrated_gradients" (422 above it).',
    )
    ui: bool = Field(True, description="Serve the demo page at GET / (false: 404).")
    drain_delay: float = Field(
        0.0,
        ge=0,
        description="Seconds to keep accepting requests after SIGTERM with /ready at 503, so "
        "load balancers stop routing here before the listener closes.",
    )

    poll_interval: float = Field(
        10.0,
        ge=0,
        description="Seconds between two scans of the model folder for new, changed or "
        "removed files (0: only on SIGHUP and the repository API's load).",
    )
    admin_key: str | None = Field(
        None,
        description="When set, the repository API's load and unload take "
        "`Authorization: Bearer <key>`; unset, they answer 403.",
    )
    state_dir: Path | None = Field(
        None,
        description="Folder where the workers share the repository API's unload list; the "
        "launcher sets it for --workers > 1.",
    )
    payload_log: Path | None = Field(
        None, description="Payload log: a file for JSON lines of sampled requests' inputs and "
        "answers (unset: off)."
    )
    payload_log_sample_rate: float = Field(
        1.0, ge=0, le=1, description="Payload log: share of successful requests written."
    )
    payload_log_max_bytes: int = Field(
        64 * MiB, ge=1024, description="Payload log: size at which the file rotates."
    )
    payload_log_backups: int = Field(3, ge=1, le=100,
                                     description="Payload log: rotated files kept.")
    payload_log_max_record_bytes: int = Field(
        64 * 1024, ge=512, description="Payload log: a longer line keeps only its metadata."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # An environment variable is one string: accept "a,b" as well as '["a", "b"]'.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("api_key", "admin_key")
    @classmethod
    def _key_can_match(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A key that no Authorization header can carry would lock every client out.
        if value is not None and (value != value.strip() or not value.isprintable()):
            which = "API" if info.field_name == "api_key" else "admin"
            raise ValueError(f"the {which} key must not start or end with spaces, nor hold "
                             "control characters: no Authorization header could carry it")
        return value

    @field_validator("api_key", "admin_key", "default_model", "model_dir", "state_dir",
                     "payload_log", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # NNSERVE_API_KEY= (empty) in a compose file means "no key", not "the empty key".
        if isinstance(value, str) and not value.strip():
            return None
        return value
