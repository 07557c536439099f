"""Shared helpers imported by the ETL DAGs (not a DAG itself)."""

BATCH_SIZE = 5_000


def chunks(items, size=BATCH_SIZE):
    for i in range(0, len(items), size):
        yield items[i : i + size]
