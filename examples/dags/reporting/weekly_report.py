"""Weekly report — a DAG in a nested folder with a non-ASCII description: rapport hebdomadaire, 週報."""
from datetime import datetime

from airflow import DAG
from airflow.operators.empty import EmptyOperator

with DAG(dag_id="weekly_report", start_date=datetime(2024, 1, 1), schedule="@weekly", catchup=False) as dag:
    EmptyOperator(task_id="render") >> EmptyOperator(task_id="publish")
