"""The steps of a compliance report, as plain functions (wrapped as Prefect tasks in `flows/`)."""
