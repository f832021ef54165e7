"""Settings for every ``asvat`` command, read from ``ASVAT_``-prefixed environment variables.

Each field's description names the variable that sets it; the README's configuration
table is generated from this class (``asvat config --markdown``), so the code is the
reference.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Kafka topics, named once. Versioned names: a breaking contract change gets a new topic.
TOPIC_INCIDENTS = "asvat.incidents.v1"
TOPIC_ASSESSMENTS = "asvat.assessments.v1"
TOPIC_ESCALATIONS = "asvat.escalations.v1"
TOPIC_LATE = "asvat.incidents.late.v1"
TOPIC_REVIEWS = "asvat.reviews.v1"
TOPIC_CASE_REVIEWS = "asvat.case-reviews.v1"
TOPIC_INTEGRITY = "asvat.integrity.v1"
#: Raw incident.v1 events from upstream command-and-control integrations (ingest reads it).
TOPIC_RAW = "asvat.raw.v1"
#: Records ingest's Kafka and file sources rejected, pseudonymised (schemas/dead-letter.v1.json).
TOPIC_DLQ = "asvat.incidents.dlq.v1"
#: One partition: a record written by ingest each time it has republished its durable log to
#: a broker that had lost it (the embedded broker keeps nothing across a restart).
TOPIC_EPOCH = "asvat.epoch.v1"
#: Commands from people to the workers: ``escalation.close`` from the API (command.v1).
TOPIC_COMMANDS = "asvat.commands.v1"
ALL_TOPICS = (
    TOPIC_INCIDENTS,
    TOPIC_ASSESSMENTS,
    TOPIC_ESCALATIONS,
    TOPIC_LATE,
    TOPIC_REVIEWS,
    TOPIC_CASE_REVIEWS,
    TOPIC_INTEGRITY,
    TOPIC_RAW,
    TOPIC_DLQ,
    TOPIC_COMMANDS,
)

EMBEDDED_BROKER_PORT = 19092


class Settings(BaseSettings):
    """All run-time settings. Environment variables win over defaults."""

    model_config = SettingsConfigDict(env_prefix="ASVAT_", extra="ignore")

    env: Literal["development", "production"] = Field(
        "development",
        description="ASVAT_ENV: `production` refuses to start without an explicit HMAC key.",
    )
    data_dir: Path = Field(
        Path("./data"),
        description="ASVAT_DATA_DIR: everything the embedded default keeps (database, worker "
        "state, logs, generated HMAC key). Removing it resets the system.",
    )
    kafka_bootstrap: str | None = Field(
        None,
        description="ASVAT_KAFKA_BOOTSTRAP: `host:port[,host:port]` of an existing Kafka. "
        "Unset: `asvat up` starts the embedded Tansu broker on 127.0.0.1 "
        "(`ASVAT_EMBEDDED_BROKER_PORT`, default 19092).",
    )
    embedded_broker_port: int = Field(
        EMBEDDED_BROKER_PORT,
        description="ASVAT_EMBEDDED_BROKER_PORT: port of the embedded broker `asvat up` starts.",
    )
    topic_partitions: int = Field(
        4, ge=1, description="ASVAT_TOPIC_PARTITIONS: partitions per topic when asvat creates them."
    )
    policy: Path | None = Field(
        None,
        description="ASVAT_POLICY: the detection policy YAML file (`--policy` overrides). "
        "Unset: the shipped default policy.",
    )
    hmac_key: str | None = Field(
        None,
        description="ASVAT_HMAC_KEY: secret key for pseudonymising caller identifiers "
        "(at least 32 characters).",
        repr=False,
    )
    hmac_key_file: Path | None = Field(
        None,
        description="ASVAT_HMAC_KEY_FILE: file holding the HMAC key (wins over ASVAT_HMAC_KEY).",
    )
    hmac_key_id: str = Field(
        "k1", description="ASVAT_HMAC_KEY_ID: label of the HMAC key, carried on every event."
    )
    hmac_previous_key_files: str | None = Field(
        None,
        description="ASVAT_HMAC_PREVIOUS_KEY_FILES: during a key rotation, the retired keys "
        "still linked, as `id=path[,id=path]` (files holding the keys); see docs/operations.md.",
    )
    hmac_previous_keys: str | None = Field(
        None,
        description="ASVAT_HMAC_PREVIOUS_KEYS: as ASVAT_HMAC_PREVIOUS_KEY_FILES, with the keys "
        "themselves: `id=key[,id=key]`.",
        repr=False,
    )
    event_log_url: str | None = Field(
        None,
        description="ASVAT_EVENT_LOG_URL: SQLAlchemy URL of ingest's durable event log (every "
        "accepted event, republished to a broker that lost it). Unset: a SQLite file "
        "`ingest-events.db` in the data directory. In production, PostgreSQL.",
    )
    database_url: str | None = Field(
        None,
        description="ASVAT_DATABASE_URL: SQLAlchemy URL of the API database. "
        "Unset: a SQLite file `asvat.db` in the data directory.",
    )
    ingest_host: str = Field("127.0.0.1", description="ASVAT_INGEST_HOST: ingest bind address.")
    ingest_port: int = Field(8001, description="ASVAT_INGEST_PORT: ingest HTTP port.")
    api_host: str = Field("127.0.0.1", description="ASVAT_API_HOST: API bind address.")
    api_port: int = Field(8000, description="ASVAT_API_PORT: API HTTP port.")
    worker_host: str = Field("127.0.0.1", description="ASVAT_WORKER_HOST: worker bind address.")
    worker_port: int = Field(
        8002, description="ASVAT_WORKER_PORT: worker HTTP port (`/healthz`, `/readyz`, `/metrics`)."
    )
    worker_stall_seconds: float = Field(
        60.0,
        gt=0,
        description="ASVAT_WORKER_STALL_SECONDS: the worker's `/readyz` fails when work waits "
        "and nothing was applied, or nothing committed, for this long.",
    )
    worker_checkpoint_seconds: float = Field(
        300.0,
        ge=0,
        description="ASVAT_WORKER_CHECKPOINT_SECONDS: how often a caught-up worker writes "
        "a checkpoint of its state (a restart then reads only what came after it); 0: never.",
    )
    worker_checkpoint_dir: Path | None = Field(
        None,
        description="ASVAT_WORKER_CHECKPOINT_DIR: the directory of the worker's checkpoint file. "
        "Unset: `<ASVAT_DATA_DIR>/worker/checkpoint-<ASVAT_WORKER_PORT>` (one per worker).",
    )
    consumer_group: str = Field(
        "asvat-repeat-detector",
        description="ASVAT_CONSUMER_GROUP: Kafka consumer group (faust app id) of the workers.",
    )
    api_consumer_group: str = Field(
        "asvat-api",
        description="ASVAT_API_CONSUMER_GROUP: consumer group of the API's topic reader.",
    )
    future_skew_seconds: int = Field(
        300,
        ge=0,
        description="ASVAT_FUTURE_SKEW_SECONDS: how far in the future `occurred_at`/`reported_at` "
        "may be (clock skew) before an event is rejected.",
    )
    publish_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="ASVAT_PUBLISH_TIMEOUT_SECONDS: how long ingest waits for the broker's acks "
        "before answering 503.",
    )
    ingest_raw_consumer: bool = Field(
        True,
        description="ASVAT_INGEST_RAW_CONSUMER: whether ingest also reads raw incident events "
        "from the Kafka topic `asvat.raw.v1` (validated and pseudonymised as over HTTP; "
        "rejects go to `asvat.incidents.dlq.v1`).",
    )
    ingest_raw_consumer_group: str = Field(
        "asvat-ingest-raw",
        description="ASVAT_INGEST_RAW_CONSUMER_GROUP: consumer group of ingest's reader of "
        "`asvat.raw.v1`.",
    )
    bus_network_geojson: Path | None = Field(
        None,
        description="ASVAT_BUS_NETWORK_GEOJSON: bus routes (LineStrings) and stops (Points), "
        "GeoJSON WGS84, for placing bus safety feedback. Unset: the shipped illustrative "
        "Newcastle sample.",
    )
    log_level: str = Field("INFO", description="ASVAT_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR.")
    districts_geojson: Path | None = Field(
        None,
        description="ASVAT_DISTRICTS_GEOJSON: district boundaries (GeoJSON, WGS84; properties "
        "`objectid` or `code`, and `district` or `name`). Unset: the shipped Northumbria file.",
    )
    wards_geojson: Path | None = Field(
        None,
        description="ASVAT_WARDS_GEOJSON: ward boundaries (GeoJSON, WGS84; properties "
        "`ward_code` and `ward_name`). Unset: the shipped Northumbria file.",
    )
    cors_origins: str = Field(
        "",
        description="ASVAT_CORS_ORIGINS: comma-separated origins allowed to call the API from "
        "a browser. Empty (the default): CORS closed, only the API's own dashboard.",
    )

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap servers every client connects to."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.embedded_broker_port}"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'asvat.db').resolve()}"

    @property
    def resolved_event_log_url(self) -> str:
        if self.event_log_url:
            return self.event_log_url
        return f"sqlite:///{(self.data_dir / 'ingest-events.db').resolve()}"

    @property
    def resolved_checkpoint_dir(self) -> Path:
        """Where this worker keeps its checkpoint (one directory per worker: a checkpoint is
        one worker's state, and its writer removes what a killed write left there)."""
        if self.worker_checkpoint_dir is not None:
            return self.worker_checkpoint_dir
        return self.data_path / "worker" / f"checkpoint-{self.worker_port}"

    @cached_property
    def data_path(self) -> Path:
        """The data directory, created on first use."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir.resolve()


def load_settings() -> Settings:
    return Settings()
