"""One module per stage gate: its suite, derived columns and pandas checks."""
