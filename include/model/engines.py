"""The training engines: XGBoost in the task's process (`single`), or `xgboost.dask` on the Dask
cluster at LOOP_DASK_ADDRESS (`dask`) when the form asks for it or the training rows reach
LOOP_DASK_MIN_ROWS. Both take the same options; the Dask booster comes back as a plain
`XGBClassifier`, so what follows (metrics, MLflow's xgboost flavour, the gate, the bento) does not
know which engine trained it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from include.model.params import TrainParams
from include.outcomes import FailNow
from include.settings import Settings, variable

if TYPE_CHECKING:
    import pandas as pd
    from xgboost import XGBClassifier


class NoDaskCluster(FailNow):
    """A run asked for Dask but no cluster is configured; retrying cannot help."""


def _model_options(X: pd.DataFrame, params: TrainParams, categorical: tuple[str, ...]) -> dict:
    """The XGBClassifier options of both engines."""
    return {
        "tree_method": "hist",
        "enable_categorical": True,
        "feature_types": ["c" if c in categorical else "q" for c in X.columns],
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "random_state": 0,
        **params.xgb_params(),
    }


def fit(X: pd.DataFrame, y: pd.Series, params: TrainParams, categorical: tuple[str, ...] = ()) -> XGBClassifier:
    from xgboost import XGBClassifier

    return XGBClassifier(n_jobs=2, **_model_options(X, params, categorical)).fit(X, y)


def choose_engine(distributed: bool, n_rows: int, settings: Settings) -> Literal["single", "dask"]:
    """`dask` if the run asks for it or `n_rows` reaches LOOP_DASK_MIN_ROWS with a cluster configured,
    else `single`. Asking for Dask without a cluster fails the run rather than quietly training here."""
    if not settings.dask_address:
        if distributed:
            raise NoDaskCluster(
                f"the run asks for distributed training but {variable('dask_address')} is empty: set it to the "
                "Dask scheduler (e.g. tcp://dask-scheduler:8786), or run without `distributed`"
            )
        return "single"
    return "dask" if distributed or n_rows >= settings.dask_min_rows else "single"


def fit_on_dask(
    X: pd.DataFrame, y: pd.Series, params: TrainParams, categorical: tuple[str, ...], address: str
) -> tuple[XGBClassifier, int]:
    """`fit` with xgboost.dask on the cluster at `address`, one partition per worker.

    Returns the model as a plain `XGBClassifier` (the booster the workers trained) and the number
    of workers that trained it. A cluster that does not answer raises `ConnectionError`, which keeps
    the task's retries.
    """
    import dask.dataframe as dd
    import numpy as np
    import xgboost.dask
    from distributed import Client
    from xgboost import XGBClassifier

    options = _model_options(X, params, categorical)
    where = f"the Dask scheduler at {address} ({variable('dask_address')})"
    try:
        client = Client(address, timeout="30s")
    except OSError as exc:
        raise ConnectionError(f"{where} did not answer within 30 s: {exc}") from exc
    with client:
        try:
            client.wait_for_workers(1, timeout=60)
        except TimeoutError as exc:
            raise ConnectionError(f"{where} has no workers after 60 s") from exc
        workers = len(client.nthreads())
        # Scattered to the workers, not dd.from_pandas: that embeds the frame in the task graph,
        # which the scheduler then holds in memory as well.
        frame = X.assign(_label=y.to_numpy())
        bounds = np.linspace(0, len(frame), workers + 1).astype(int)
        parts = client.scatter([frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        data = dd.from_delayed(parts, meta=frame.head(0))
        model = xgboost.dask.DaskXGBClassifier(**options)
        model.client = client
        model.fit(data[list(X.columns)], data["_label"])
        booster = model.get_booster()
    local = XGBClassifier(n_jobs=2, **options)
    local.load_model(booster.save_raw())
    return local, workers
