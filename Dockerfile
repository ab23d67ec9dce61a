# syntax=docker/dockerfile:1
# Build stage: a wheel of the project and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the wheels, a non-root user, and a DSN.
FROM python:3.11-slim AS runtime
RUN groupadd --system potato && useradd --system --gid potato --home-dir /nonexistent potato
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER potato
ENV POTATO_HOST=0.0.0.0 \
    POTATO_PORT=50051 \
    GRPC_ENABLE_FORK_SUPPORT=false
EXPOSE 50051
# POTATO_DSN must be set at run time: the image has no embedded PostgreSQL.
ENTRYPOINT ["potato-runs", "serve"]
