"""One backtest of a use case: its calendar replayed under every policy, the outputs written."""

from __future__ import annotations

from pathlib import Path

from include.backtest.figures import say
from include.backtest.policies import Policy, default_policies, loop_policies, replay_policies
from include.backtest.replay import Replay
from include.backtest.report import json_ready, plot_served_quality, write_results
from include.backtest.summary import CBPE_TOLERANCE, SWEEP_AGES, SWEEP_SHARES, summarize, sweep
from include.backtest.timeline import first_model_week, fixed_schedule, matching_interval, replay_weeks
from include.model.params import TrainParams, form_defaults
from include.monitoring.policy import PolicyConfig
from include.usecases import UseCase


def run_backtest(
    usecase: UseCase,
    out_dir: Path,
    *,
    weeks: int | None = None,
    params: TrainParams | None = None,
    min_partitions: int | None = None,
    threshold: float | None = None,
    cache: Path | None | bool = True,
    sweep_grid: bool = False,
) -> dict:
    """Replay the use case's calendar (its first `weeks` weeks, if given) under every policy, write
    results.json, results.md and served_quality.png to `out_dir`, and return what results.json holds.
    What is not given is what the DAGs would use under the settings: the `train` form's defaults, the
    monitor's policy as `default`. `cache`: where fitted models are kept across runs (True:
    `out_dir/fits`; False or None: nowhere). `sweep_grid`: also replay the default policy over the
    grid of `sweep` (results.json "sweep")."""
    from include.settings import get_settings

    settings = get_settings()
    params = params or TrainParams(**form_defaults(settings))
    replayed = Replay(
        usecase,
        replay_weeks(usecase.calendar, weeks),
        params,
        settings.min_train_partitions if min_partitions is None else min_partitions,
        settings.operating_threshold if threshold is None else threshold,
        cache=out_dir / "fits" if cache is True else cache or None,
    )
    first = first_model_week(replayed.weeks, params.window_weeks)
    last = len(replayed.weeks)
    say(
        f"backtest of {usecase.name}: weeks 1…{last} ({replayed.weeks[0].start.date()} … {replayed.weeks[-1].end.date()}), "
        f"first model at the end of week {first}, weeks {first + 1}…{last} served; window {params.window_weeks} weeks"
    )
    default = PolicyConfig.from_settings(settings, tuple(usecase.drift_exempt))
    policies = default_policies(default) + loop_policies(settings, tuple(usecase.drift_exempt))
    records = replay_policies(replayed, policies, first)
    target = sum(r["retrained"] for r in records["default"])
    k = matching_interval(target, first, last)
    matched = Policy(f"every {k} week{'s' if k > 1 else ''} (matches default)", every=k)
    say(f"default retrained {target} times; every {k} weeks retrains {len(fixed_schedule(first, last, k))} times: replaying it")
    records |= replay_policies(replayed, [matched], first)
    policies.insert(3, matched)
    swept = None
    if sweep_grid:
        say(f"sweep: the default policy with {len(SWEEP_SHARES) * len(SWEEP_AGES)} settings of drift share and maximum model age")
        swept = sweep(replayed, first, records["weekly"], default)

    results = json_ready(
        {
            "usecase": usecase.name,
            "settings": {
                "calendar": {"start": usecase.calendar.start, "end": usecase.calendar.end, "timezone": usecase.calendar.timezone},
                "weeks": last,
                "first_model_week": first,
                "params": params.model_dump(mode="json"),
                "min_partitions": replayed.min_partitions,
                "operating_threshold": replayed.threshold,
                "cbpe_tolerance": CBPE_TOLERANCE,
            },
            "weeks": [{"week": w.number, "start": w.start, "end": w.end, "served": w.number > first} for w in replayed.weeks],
            "served_weeks": [w.number for w in replayed.weeks[first:]],
            "windows": replayed.windows(),
            "fits": {"windows": replayed.fits, "refits": replayed.refits, "from_cache": replayed.loaded, "cache": replayed.cache},
            "policies": [summarize(p, records[p.name], default.max_model_age) for p in policies],
            **({"sweep": swept} if swept else {}),
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_served_quality(results, out_dir / "served_quality.png")
    results["runtime_seconds"] = round(replayed.elapsed(), 1)
    table = write_results(results, out_dir)
    say(f"\n{table}\nwritten to {out_dir}/: results.json, results.md, served_quality.png {replayed.progress()}")
    return results
