# One image for the code location, the Dagster webserver and the daemon.
FROM python:3.12-slim
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 DAGSTER_HOME=/opt/dagster/home
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /opt/quantdag
COPY pyproject.toml uv.lock .python-version README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY . .
RUN uv sync --frozen --no-dev \
    && mkdir -p "$DAGSTER_HOME" && cp deploy/dagster.postgres.yaml "$DAGSTER_HOME/dagster.yaml"
ENV PATH="/opt/quantdag/.venv/bin:$PATH"
