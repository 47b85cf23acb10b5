"""Drift statistics: a streaming comparison of served traffic with a model's reference profile.

`DriftAccumulator.update` takes one partition of the inference log at a time and only adds counts
(one `searchsorted` + `bincount` per column), so memory stays bounded by the number of bins, not by
the window. PSI is computed on the reference's bins; categorical features also get the
Jensen–Shannon distance (scipy); scores get PSI and a two-sample KS test (scipy) against the
reference sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from include.monitoring.noise import block_noise_thresholds, estimated_performance, psi, psi_noise_threshold
from include.monitoring.profile import categorical_counts, numeric_counts

if TYPE_CHECKING:
    import pandas as pd


PSI_FLOOR = 0.05
"""No threshold below this: a feature the reference holds constant has no sampling noise at all,
and a PSI this small never means anything (by convention under 0.1 is "no change"). Schedule
features (carrier, distance, hour) shift by a PSI of 0.01-0.04 from one week to the next, further
than resampling whole reference days predicts: the backtest of 2013 retrained on that at a 0.01
floor, and its drift signal turned useful at 0.05."""


@dataclass
class DriftAccumulator:
    """Counts of the current window in the reference's bins; feed it partitions one by one."""

    profile: dict
    days: int = 0
    """Event days the window's rows span (set by the caller): drift thresholds resample as many."""
    noise_quantile: float = 0.99
    """Thresholds: this quantile of PSI over windows drawn from the reference itself."""
    score_reservoir: int = 10_000
    seed: int = 0
    n: int = 0
    labelled: int = 0
    labelled_positives: int = 0
    positives: float = 0.0
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    score_counts: np.ndarray | None = None
    _scores: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """Sampled scores with the number of window rows each stands for."""

    def update(self, features: pd.DataFrame, scores: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        for name, ref in self.profile["features"].items():
            values = features[name].to_numpy(dtype="float64")
            add = (
                categorical_counts(values, ref["categories"])
                if ref["kind"] == "categorical"
                else numeric_counts(values, ref["edges"])
            )
            self.counts[name] = self.counts.get(name, 0) + add
        self.n += len(features)
        if scores is not None:
            scores = np.asarray(scores, dtype="float64")
            add = numeric_counts(scores, self.profile["score"]["edges"])
            self.score_counts = add if self.score_counts is None else self.score_counts + add
            self._scores.append((scores, np.ones(scores.size)))
            self._shrink_scores()
        if labels is not None:
            labels = np.asarray(labels, dtype="float64")
            known = ~np.isnan(labels)
            self.labelled += int(known.sum())
            self.labelled_positives += int(labels[known].sum())
            self.positives += float(labels[known].sum())

    def _shrink_scores(self) -> None:
        # A bounded sample of the window's scores for the KS test; weights keep every partition
        # represented by its row count, however many shrinks ago it was sampled.
        pooled = np.concatenate([s for s, _ in self._scores])
        weights = np.concatenate([w for _, w in self._scores])
        if pooled.size > self.score_reservoir:
            rng = np.random.default_rng(self.seed + self.n)
            idx = rng.choice(pooled.size, size=self.score_reservoir, p=weights / weights.sum())  # with replacement: unbiased
            pooled, weights = pooled[idx], np.full(self.score_reservoir, weights.sum() / self.score_reservoir)
        self._scores = [(pooled, weights)]

    def report(self) -> dict:
        """Per-feature PSI with its noise threshold at this window's size and the feature's share of
        the model's attributions (JS distance for categoricals), prediction drift, the performance
        estimated from the scores (CBPE), base-rate shift."""
        from scipy.spatial.distance import jensenshannon
        from scipy.stats import ks_2samp

        features = {}
        present = {name: ref for name, ref in self.profile["features"].items() if name in self.counts}
        thresholds = self._thresholds(present) if self.n else {}
        shares = self.profile.get("shares") or dict.fromkeys(self.profile["features"], 1 / max(len(self.profile["features"]), 1))
        for name, ref in present.items():
            cur = self.counts[name]
            entry = {"psi": psi(ref["counts"], cur), "missing_share": float(cur[-1] / max(cur.sum(), 1)), "counts": cur.tolist()}
            entry |= {"threshold": thresholds[name], "share": float(shares.get(name, 0.0))} if name in thresholds else {}
            if ref["kind"] == "categorical":
                p = np.asarray(ref["counts"], dtype="float64")
                entry["js_distance"] = float(jensenshannon(p / p.sum(), cur / max(cur.sum(), 1), base=2))
                entry["unknown_share"] = float(cur[-2] / max(cur.sum(), 1))
            features[name] = entry
        out: dict = {"n": self.n, "days": self.days, "features": features}
        if self.score_counts is not None and self.n:
            sample = np.concatenate([s for s, _ in self._scores])
            ks = ks_2samp(self.profile["score"]["sample"], sample)
            out["prediction"] = {
                "psi": psi(self.profile["score"]["counts"], self.score_counts),
                "threshold": psi_noise_threshold(self.profile["score"]["counts"], self.n, self.noise_quantile, seed=self.seed),
                "ks_statistic": float(ks.statistic),
                "ks_pvalue": float(ks.pvalue),
            }
            if "calibration" in self.profile:
                out["estimated"] = estimated_performance(sample, self.profile["calibration"])
        out["labels"] = {
            "labelled": self.labelled,
            "positives": self.labelled_positives,
            "base_rate": self.positives / self.labelled if self.labelled else None,
            "reference_base_rate": self.profile["base_rate"],
        }
        return out

    def _thresholds(self, features: dict) -> dict[str, float]:
        """Each feature's PSI noise threshold at this window's rows and days: whole reference days
        resampled when the profile has them (`block_noise_thresholds`), else rows alone."""
        reference = {name: np.asarray(ref["counts"], dtype="float64") for name, ref in features.items()}
        daily = self.profile.get("daily_counts")
        if daily and self.days:
            ordered = [daily[d] for d in sorted(daily)]
            found = block_noise_thresholds(reference, ordered, self.n, self.days, self.noise_quantile, seed=self.seed)
        else:
            found = {name: psi_noise_threshold(c, self.n, self.noise_quantile, seed=self.seed) for name, c in reference.items()}
        return {name: max(t, PSI_FLOOR) for name, t in found.items()}
