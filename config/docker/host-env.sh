# Source it from the checkout, `. config/docker/host-env.sh [ENV_FILE]`: the kafka-pipeline
# commands of this shell then use the compose stack through its published ports (Kafka's HOST
# listener localhost:29092, MinIO's S3 API on localhost:9000 with the keys of .env).
#   . config/docker/host-env.sh && kafka-pipeline status --ops-url http://localhost:9101 ...
_kp_env_file="${1:-.env}"
_kp_value() { sed -n "s/^$1=//p" "$_kp_env_file" | tail -n 1; }
if [ ! -r "$_kp_env_file" ]; then
  echo "host-env.sh: $_kp_env_file not found (run it from the checkout, or pass the .env file)" >&2
else
  export KAFKA_BOOTSTRAP_SERVERS=localhost:29092
  export DELTA_TABLES_ROOT="s3://$(_kp_value S3_BUCKET)/tables"
  export KP_DELTA__STORAGE_OPTIONS="{\"AWS_ENDPOINT_URL\": \"http://localhost:9000\", \"AWS_ACCESS_KEY_ID\": \"$(_kp_value MINIO_ROOT_USER)\", \"AWS_SECRET_ACCESS_KEY\": \"$(_kp_value MINIO_ROOT_PASSWORD)\", \"AWS_REGION\": \"us-east-1\", \"AWS_ALLOW_HTTP\": \"true\"}"
fi
unset -f _kp_value
unset _kp_env_file
