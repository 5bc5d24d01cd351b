"""Settings: a config file and its overrides (loading), the typed sections
with their defaults (sections, trace) and one check per field (checks), and
what a checkpoint is (identity)."""
