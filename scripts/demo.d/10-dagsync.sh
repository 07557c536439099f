# dagsync: upload examples/dags to an S3 prefix in the emulator, sync it into a local
# "EFS" folder, then change the prefix and show the plan and the second sync.
dags_bucket=airside-demo-dags
dags_dest="$DEMO_DIR/efs/dags"
mkdir -p "$dags_dest"
"$PY" - "$dags_bucket" <<'PYEOF'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
bucket = sys.argv[1]
s3.create_bucket(Bucket=bucket)
n = 0
for root, _, files in os.walk("examples/dags"):
    for f in files:
        path = os.path.join(root, f)
        key = "dev/" + os.path.relpath(path, "examples/dags")
        s3.upload_file(path, bucket, key)
        n += 1
print(f"uploaded {n} files from examples/dags to s3://{bucket}/dev/")
PYEOF

"$AIRSIDE_BIN/dagsync" --once --source "s3://$dags_bucket/dev/" --dest "$dags_dest" --log-format text
echo "DAG folder after the first sync:"
(cd "$dags_dest" && find . -path ./.dagsync -prune -o -type f -print | sort | sed 's/^/  /')

"$PY" - "$dags_bucket" <<'PYEOF'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
bucket = sys.argv[1]
s3.put_object(Bucket=bucket, Key="dev/hello_airflow.py", Body=b"# edited in S3\n" + s3.get_object(Bucket=bucket, Key="dev/hello_airflow.py")["Body"].read())
s3.delete_object(Bucket=bucket, Key="dev/reporting/weekly_report.py")
s3.put_object(Bucket=bucket, Key="dev/../escape.py", Body=b"never written")
print("changed the prefix: edited hello_airflow.py, deleted reporting/weekly_report.py, added an unsafe key")
PYEOF
echo "plan (--once --dry-run):"
"$AIRSIDE_BIN/dagsync" --once --dry-run --source "s3://$dags_bucket/dev/" --dest "$dags_dest" --log-level warn 2>/dev/null | sed 's/^/  /'
"$AIRSIDE_BIN/dagsync" --once --source "s3://$dags_bucket/dev/" --dest "$dags_dest" --log-format text
[[ ! -e "$DEMO_DIR/efs/escape.py" && ! -e "$dags_dest/reporting" ]]
head -1 "$dags_dest/hello_airflow.py" | grep -q "edited in S3"
echo "dagsync: edit applied, deletion applied and its empty folder pruned, unsafe key skipped"
