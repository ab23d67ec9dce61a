"""The gRPC service config (gRFC A6 retries) that callers of Potato Runs should use.

Copy `SERVICE_CONFIG_JSON` (the README shows it) into the channel options:

    grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

Retried: `UNAVAILABLE` (the database or the server is unreachable) and
`RESOURCE_EXHAUSTED` (the server shed the call, `transport/shedding.py`: it never ran).
Up to 4 attempts, exponential backoff from 100 ms to 1 s (full jitter, done by gRPC).
A server's `grpc-retry-pushback-ms` trailer replaces the backoff for the next attempt,
and `-1` there stops the retries. `retryThrottling` pauses a channel's retries while its
token bucket is at half or below: a failed call costs one token, a success earns 0.1, so
retries stop when more than about one call in eleven fails, and a client cannot multiply
an outage's load.

Why retrying every method is safe: a shed call never started; every write is idempotent
(MarkDay and UnmarkDay set a state, BackfillDays sets a set of dates; a write answered
UNAVAILABLE says in `ErrorInfo.metadata["write_outcome"]` whether it may have been
applied); a retried MarkDay that had committed answers with change `NONE` instead of the
original one, which a write `request_id` (AIP-155) replays exactly. AdminService calls
are idempotent too (a rebuild is deterministic, a flag change sets a state), and its
`RollbackFlag` is never shed. gRPC retries only while no response header has arrived,
which holds for both codes here: the server answers them before any header.
"""

from __future__ import annotations

import json
from typing import Any

SERVICES = ("potato.runs.v2.RunsService", "potato.runs.v2.TotalsService",
            "potato.runs.v2.AdminService", "potato.runs.v1.RunsService")

SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [{
        "name": [{"service": s} for s in SERVICES],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
        },
    }],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}

SERVICE_CONFIG_JSON = json.dumps(SERVICE_CONFIG, indent=2)

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
)
"""Channel options that turn the retry policy on (retries are on by default in recent
grpcio; saying so keeps older clients right)."""
