"""The prediction service: one BentoML 1.4 service class serving one registered model version.

A bento is built per model version (`include/package.py`); its build arguments name the BentoML
model (imported from the MLflow registry in XGBoost's native format) and the use case, so a bento
is self-contained: `bentoml serve <bento tag>` needs nothing else.

Endpoints: `POST /predict` (one record, the request body is the record), `POST /predict_batch`
(`{"records": [...]}`, adaptive batching across concurrent callers), BentoML's own `/livez`,
`/readyz` and `/metrics`. Requests are validated by a schema generated from the use case's
contract; a client mistake is a 4xx naming the field, never a 5xx.

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

from include.serving.schema import MAX_BATCH, Prediction, request_model
from include.settings import get_settings
from include.usecases import get_usecase

log = logging.getLogger("loop.serving")

ARGS = bentoml.use_arguments()
USECASE = get_usecase(getattr(ARGS, "usecase", None))
Record = request_model(USECASE)
Records = Annotated[list[Record], Field(min_length=1, max_length=MAX_BATCH)]


@bentoml.service(
    name="loop-predictor",
    workers=get_settings().slot_workers,
    traffic={"timeout": 10, "max_concurrency": 256},
    metrics={"enabled": True, "namespace": "loop"},
    logging={"access": {"enabled": False}},
)
class Predictor:
    model = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        self.model_version = str(getattr(ARGS, "model_version", self.model.tag.version))
        self.threshold = float(getattr(ARGS, "threshold", 0.5))
        self.slot = get_settings().slot
        classifier = bentoml.mlflow.load_model(self.model).get_raw_model()
        self.booster = classifier.get_booster()
        fault, _, after = get_settings().slot_fault.partition(":")
        self.fault, self.fault_after, self.served = fault, int(after or 0), 0
        self.sink = None
        if get_settings().inference_log:
            from include.serving.inference_log import InferenceLog

            self.sink = InferenceLog(USECASE, self.model_version, self.slot)
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
        features = USECASE.encode_records(records)
        scores = self.booster.inplace_predict(np.asarray(features, dtype=np.float32)).tolist()
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
