# One image for the Procfile's three processes. The default command is the Procfile's `web`;
# compose.yaml (and any orchestrator) runs `python -m workers` and `python -m reconciler` from it.
#
#   docker build -t vector-sync .
#
# Runtime dependencies only (no `test` extra), at the versions pinned in constraints.txt.
# Python 3.11: the version constraints.txt was resolved on (its header says so).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY core ./core
COPY receiver ./receiver
COPY workers ./workers
COPY reconciler ./reconciler
COPY sandbox ./sandbox
COPY cli ./cli
COPY openai_bpe ./openai_bpe
RUN python -m venv /opt/vector-sync \
 && /opt/vector-sync/bin/python -m pip install -c constraints.txt --upgrade pip \
 && /opt/vector-sync/bin/python -m pip install -c constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/vector-sync vector-sync
COPY --from=build /opt/vector-sync /opt/vector-sync
ENV PATH=/opt/vector-sync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VECTOR_SYNC_HOME=/home/vector-sync/.vector-sync \
    PORT=8080
WORKDIR /home/vector-sync
USER vector-sync
EXPOSE 8080
CMD ["sh", "-c", "exec uvicorn --factory receiver.app:main --host 0.0.0.0 --port ${PORT:-8080}"]
