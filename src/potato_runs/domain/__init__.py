"""Pure domain: rules, models and computations. No I/O here."""
