"""The workbench: the event log in a notebook (replay, temporal queries, dedup audit)."""
