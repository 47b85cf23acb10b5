"""The continuous-training loop: plain functions the Airflow DAGs call.

Nothing here imports Airflow except `assets.py` (the Asset declarations), and nothing heavy (xgboost, mlflow, great_expectations) is
imported at module level, so DAG files that import this package stay fast to parse.
"""
