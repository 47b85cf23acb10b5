"""`make backtest`: every retrain policy replayed on the use case's history, week by week.

python -m include.backtest [--weeks N | --start DATE --end DATE] [--window-weeks N] [--out DIR] [--usecase NAME] [--sweep]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

from include.backtest.run import run_backtest
from include.backtest.timeline import NoWeekToServe
from include.model.dataset import NotEnoughData
from include.model.params import TrainParams, form_defaults
from include.settings import get_settings
from include.usecases import get_usecase, override_calendar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.backtest", description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default=None, help="the use case (default: LOOP_USECASE)")
    parser.add_argument("--weeks", type=int, default=None, help="replay only the first N weeks of the calendar")
    parser.add_argument(
        "--start", type=date.fromisoformat, default=None, help="replay from this date (default: the calendar's start)"
    )
    parser.add_argument(
        "--end", type=date.fromisoformat, default=None, help="replay up to this date (default: the calendar's end)"
    )
    parser.add_argument(
        "--window-weeks",
        type=int,
        default=None,
        help="training window in weeks (default: the train DAG's, LOOP_TRAIN_WINDOW_WEEKS)",
    )
    parser.add_argument("--out", type=Path, default=Path("backtest"), help="output directory (default: backtest/)")
    parser.add_argument("--cache", type=Path, default=None, help="where fitted models are kept across runs (default: <out>/fits)")
    parser.add_argument("--no-cache", action="store_true", help="fit every window afresh and keep nothing")
    parser.add_argument(
        "--sweep", action="store_true", help="also replay the default policy over a grid of drift shares and maximum model ages"
    )
    args = parser.parse_args(argv)
    if args.weeks is not None and args.end is not None:
        parser.error("give --weeks or --end, not both")
    if args.weeks is not None and args.weeks < 2:
        parser.error("--weeks must be at least 2")
    settings = get_settings()
    usecase = get_usecase(args.usecase or settings.usecase)
    try:
        calendar = override_calendar(usecase.calendar, start=args.start, end=args.end, names=("--start", "--end"))
    except ValueError as exc:
        parser.error(str(exc))
    params = TrainParams(**form_defaults(settings) | ({"window_weeks": args.window_weeks} if args.window_weeks else {}))
    try:
        cache = False if args.no_cache else args.cache or True
        run_backtest(
            replace(usecase, calendar=calendar), args.out, weeks=args.weeks, params=params, cache=cache, sweep_grid=args.sweep
        )
    except (NoWeekToServe, NotEnoughData) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
