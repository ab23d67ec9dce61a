"""The research doc's cases, and the write path, zones, reads and v1 suites, re-run on
Citus: the suite's fixtures point at the coordinator and a server on it (conftest.py),
so every imported test writes through calls delegated to the user's worker and reads
back through the coordinator.

Left out: test_v1's test_each_path_reads_only_its_own_tables. It creates a NOLOGIN
probe role inside a transaction and reads as it; on Citus the coordinator reaches the
shards over connections as that role, which cannot log in to the workers (a property of
the probe, not of the read paths, whose queries are the same as on one PostgreSQL).
"""

from __future__ import annotations

from integration.test_reads import *  # noqa: F403
from integration.test_research_cases import *  # noqa: F403
from integration.test_v1 import *  # noqa: F403
from integration.test_writes import *  # noqa: F403
from integration.test_zones import *  # noqa: F403

del test_each_path_reads_only_its_own_tables  # noqa: F821
