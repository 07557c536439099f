"""A minimal DAG, synced by dagsync from S3 into /opt/airflow/dags."""
from datetime import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(dag_id="hello_airflow", start_date=datetime(2024, 1, 1), schedule="@daily", catchup=False) as dag:
    BashOperator(task_id="say_hello", bash_command="echo hello from airside")
