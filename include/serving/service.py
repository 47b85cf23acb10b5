"""The prediction service: one BentoML 1.4 service class serving one registered model version.

A bento is built per model version (`include/model/packaging.py`); its build arguments name the
BentoML model (imported from the MLflow registry in XGBoost's native format) and the use case, so a
bento is self-contained: `bentoml serve <bento tag>` needs nothing else. A slot refuses to start
unless the model's files have the digest packaging checked against the registry (`booster.py`).

Endpoints: `POST /predict` (one record, the request body is the record), `POST /predict_batch`
(`{"records": [...]}`, up to MAX_BATCH records, adaptive batching across concurrent callers),
BentoML's own `/livez`, `/readyz`, `/metrics` and `/docs.json` (the OpenAPI document, which
carries every bound below). A malformed request is a 4xx naming the problem, never a 5xx:

* not JSON (`Content-Type` missing or another type): 415; a body over LOOP_SERVING_MAX_BODY_BYTES:
  413, counted as it arrives; a body that does not arrive in time: 408 (`include/serving/guard.py`);
* a malformed request line or header (a bad `Content-Length`, a broken chunk): 400 from uvicorn's
  HTTP parser, before the service;
* invalid JSON, a wrong type, a value out of its range or vocabulary, NaN or infinity, an unknown
  or missing field, a batch over MAX_BATCH records: 400 with the field (`include/serving/schema.py`).

Event time: the monitor reads the inference log by event time (`time_hour` for flights), so a
client must not be able to write predictions into a past window the monitor reads. The service
knows only the wall clock, and the demo replays 2013 under today's clock, so "too old" cannot be
judged against the clock. The policy is therefore:

* refused (400): an event time before the use case's calendar starts, or more than
  LOOP_SERVING_MAX_LEAD_HOURS after the wall clock;
* served but kept out of the inference log, counted as `late`: an event time older, by more than
  LOOP_INFERENCE_LOG_MAX_LATENESS_HOURS (default one data interval), than the newest event time
  the worker has logged. The newest event time never counts later than the wall clock, so a
  client cannot push it forward to hide other clients' predictions; in the replay it follows the
  replayed interval. A fresh worker has seen nothing yet: its first flush sets it.

The log is written off the request path (`include/serving/inference_log.py`); what happens to
every prediction is counted in `loop_inference_log_records_total{outcome=written|dropped|late|failed}`.

The hot path is plain Python and one `inplace_predict` call: no DataFrame per request.

LOOP_SLOT_FAULT=<kind>[:<n>] in a slot's environment (chaos testing only; unset in normal
operation) makes the slot misbehave on purpose once it has answered n scoring requests: `errors`,
`slow`, `skew` (scores off by 0.01) or `unready`. The rollout tests use it to prove that a bad
slot never keeps traffic.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated

import bentoml
import numpy as np
from pydantic import Field

from include.serving.booster import load_booster
from include.serving.guard import BENTOML_HTTP_LOGGER, ClientErrorsInOneLine, RequestGuard
from include.serving.schema import MAX_BATCH, Prediction, request_model
from include.settings import get_settings
from include.usecases import get_usecase

log = logging.getLogger("loop.serving")

ARGS = bentoml.use_arguments()
USECASE = get_usecase(getattr(ARGS, "usecase", None))
Record = request_model(USECASE)
Records = Annotated[list[Record], Field(min_length=1, max_length=MAX_BATCH)]
TIMEOUT_SECONDS = 10


@bentoml.service(
    name="loop-predictor",
    workers=get_settings().slot_workers,
    traffic={"timeout": TIMEOUT_SECONDS, "max_concurrency": 256},
    metrics={"enabled": True, "namespace": "loop"},
    logging={"access": {"enabled": False}},
)
class Predictor:
    model = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        settings = get_settings()
        self.model_version = str(getattr(ARGS, "model_version", self.model.tag.version))
        self.threshold = float(getattr(ARGS, "threshold", 0.5))
        self.slot = settings.slot
        self.booster = load_booster(self.model)
        fault, _, after = settings.slot_fault.partition(":")
        self.fault, self.fault_after, self.served = fault, int(after or 0), 0
        self.sink = None
        if settings.inference_log:
            from include.data.inference_layout import log_lateness
            from include.serving.inference_log import InferenceLog

            self.sink = InferenceLog(
                USECASE,
                self.model_version,
                self.slot,
                flush_seconds=settings.inference_log_flush_seconds,
                max_queued=settings.inference_log_max_queued,
                max_lateness=log_lateness(settings, USECASE),
                on_count=log_counter(),
            )
        log.info("serving %s (version %s) in slot %s", self.model.tag, self.model_version, self.slot)

    def __is_ready__(self) -> bool:
        return not self._faulty("unready")

    @bentoml.on_shutdown
    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()

    def _faulty(self, kind: str) -> bool:
        return self.fault == kind and self.served >= self.fault_after

    def _score(self, records: list[dict]) -> list[Prediction]:
        self.served += 1
        if self._faulty("errors"):
            raise RuntimeError("fault injected: errors")
        if self._faulty("slow"):
            time.sleep(0.5)
        features = np.asarray(USECASE.encode_records(records), dtype=np.float32)
        scores = self.booster.inplace_predict(features).tolist()
        if self._faulty("skew"):
            scores = [min(1.0, s + 0.01) for s in scores]
        decisions = [s >= self.threshold for s in scores]
        for r in records:
            r["request_id"] = r.get("request_id") or uuid.uuid4().hex
        if self.sink is not None:
            self.sink.append(records, features, scores, decisions)
        return [
            Prediction(
                request_id=r["request_id"], probability=s, decision=d, threshold=self.threshold, model_version=self.model_version
            )
            for r, s, d in zip(records, scores, decisions, strict=True)
        ]

    @bentoml.api(input_spec=Record)
    def predict(self, **record) -> Prediction:
        """Score one record; the request body is the record itself."""
        return self._score([record])[0]

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=2000)
    def predict_batch(self, records: Records) -> list[Prediction]:
        """Score up to 1000 records: `{"records": [...]}`; concurrent batches are merged."""
        return self._score([r.model_dump() for r in records])


# A body still arriving at half the request timeout is the client's fault: 408, not BentoML's 504.
Predictor.add_asgi_middleware(
    RequestGuard, max_body_bytes=get_settings().serving_max_body_bytes, body_seconds=TIMEOUT_SECONDS / 2
)
logging.getLogger(BENTOML_HTTP_LOGGER).addFilter(ClientErrorsInOneLine())


def log_counter():
    """`(outcome, n)` → `loop_inference_log_records_total{outcome}`. prometheus_client is imported
    here, in the worker, after BentoML has set up its multiprocess registry."""
    from prometheus_client import Counter

    from include.serving.inference_log import OUTCOMES

    counter = Counter("loop_inference_log_records", "Predictions by what became of them in the inference log.", ["outcome"])
    for outcome in OUTCOMES:
        counter.labels(outcome=outcome)  # every outcome shows, at 0, from the start
    return lambda outcome, n: counter.labels(outcome=outcome).inc(n)
