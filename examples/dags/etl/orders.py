"""Nightly orders ETL: extract, transform, load, with a mapped task per region."""
from datetime import datetime

from airflow.decorators import dag, task


@dag(dag_id="etl_orders", start_date=datetime(2024, 1, 1), schedule="0 2 * * *", catchup=False)
def etl_orders():
    @task
    def regions() -> list[str]:
        return ["eu", "us", "ap"]

    @task
    def extract(region: str) -> int:
        return len(region)

    @task
    def load(counts: list[int]) -> None:
        print(f"loaded {sum(counts)} rows")

    load(extract.expand(region=regions()))


etl_orders()
