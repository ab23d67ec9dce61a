"""Use cases: one method per operation, wiring rules, clock and storage."""
