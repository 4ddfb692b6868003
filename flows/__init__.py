"""Prefect flows and the `accountability` command line."""
