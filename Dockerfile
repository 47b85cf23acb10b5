# One image for the loop's Python services (docker-compose.yaml): Airflow's components, the Celery
# workers (the serving host among them, with its bento slots), MLflow, Dask. Build it with
# `make image`, which passes the git commit the models trained in it are tagged with.
FROM python:3.11.15-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# curl: the services' health checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/loop
COPY requirements.txt .
# PYTHONDONTWRITEBYTECODE keeps every process from caching what it compiles, so the bytecode is made
# here, once: without it each task and server start compiles its libraries again (twice the import time).
RUN pip install uv==0.13.8 && uv pip sync --system --no-cache --compile-bytecode requirements.txt

# The user every service runs as (uid 50000, group 0, as in Airflow's own image). The code stays
# root's and read-only; what the services write (logs, the serving state) is the user's, and a
# named volume mounted there first takes over that ownership.
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/loop --shell /usr/sbin/nologin loop \
    && mkdir -p /opt/loop/logs /opt/loop/.state/serving/dynamic /opt/loop/airflow \
    && chown -R 50000:0 /opt/loop/logs /opt/loop/.state /opt/loop/airflow \
    && chmod -R g=u /opt/loop/logs /opt/loop/.state /opt/loop/airflow

COPY dags dags
COPY include include
COPY plugins plugins
RUN python -m compileall -q dags include plugins

# Last, so that a new commit rebuilds only this layer. There is no .git in the image: the commit
# comes in as a build argument and stays as LOOP_GIT_COMMIT.
ARG LOOP_GIT_COMMIT
RUN test -n "$LOOP_GIT_COMMIT" \
    || { echo "LOOP_GIT_COMMIT is empty: build with \`make image\` (or --build-arg LOOP_GIT_COMMIT=\$(git rev-parse HEAD))" >&2; exit 1; }
ENV LOOP_GIT_COMMIT=$LOOP_GIT_COMMIT \
    PYTHONPATH=/opt/loop \
    AIRFLOW_HOME=/opt/loop/airflow

USER 50000
