"""The JSON shapes of the HTTP API, as its OpenAPI schema documents them (errors: :mod:`.errors`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["EvaluationDirection", "EvaluationInfo", "Health", "MetricColumn", "ModelInfo", "ModelList"]


class EvaluationDirection(BaseModel):
    """One direction of an evaluation: per system, the number of sentences and each metric's mean."""

    name: str
    source: str | None = None
    target: str | None = None
    rows: list[dict[str, Any]]


class EvaluationInfo(BaseModel):
    """An evaluation of the model (a ``metrics.json`` under the served folder)."""

    folder: str
    report_url: str | None = None
    options: dict[str, Any] | None = None
    model_step: int | None = None
    sentences: int | None = None
    directions: list[EvaluationDirection]


class ModelInfo(BaseModel):
    """A model the server converts with, and its card."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    kind: str
    speakers: dict[str, str]
    generator: str | None = None
    generator_kwargs: dict[str, Any] = {}
    parameters: int
    preset: str
    iterations: int | None = None
    scheduled_iterations: int | None = None
    training_seconds: float | None = None
    sample_rate: int | None = None
    f0_method: str | None = None
    validation: dict[str, Any] = {}
    package_version: str | None = None
    evaluations: list[EvaluationInfo] = []


class MetricColumn(BaseModel):
    """A column of the evaluation tables."""

    key: str
    label: str
    unit: str
    lower_is_better: bool
    digits: int


class ModelList(BaseModel):
    """``GET /api/models``: the models, the evaluation tables' columns, the limits and the options."""

    models: list[ModelInfo]
    metrics: list[MetricColumn]
    limits: dict[str, float | int]
    default_options: dict[str, Any]
    recommended_options: dict[str, Any]
    form_fields: dict[str, str]


class Health(BaseModel):
    """``GET /healthz``: the server is up; how busy it is."""

    status: str
    models: int
    loaded_models: int
    workers: int
    queue: int
    timeout_s: float
    running: int
    waiting: int
    served: int
    refused: int
    timed_out: int
    failed: int
