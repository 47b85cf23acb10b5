# One image for every Python service of the production runtime (Airflow components, MLflow).
FROM python:3.11-slim
WORKDIR /opt/loop
COPY requirements.txt .
RUN pip install --no-cache-dir uv==0.13.8 && uv pip sync --system requirements.txt
COPY dags dags
COPY include include
COPY plugins plugins
ENV PYTHONPATH=/opt/loop AIRFLOW__CORE__DAGS_FOLDER=/opt/loop/dags AIRFLOW__CORE__PLUGINS_FOLDER=/opt/loop/plugins
