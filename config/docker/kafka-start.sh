#!/usr/bin/env bash
# The secure override's command for `kafka` (config/docker/compose.secure.yml), in the apache/kafka image.
# KRaft keeps SCRAM credentials in the metadata log, and the first ones can only be written when
# the log directory is formatted (kafka-storage.sh format --add-scram); the image's own start
# script formats without them. So: format with the client user's SCRAM-SHA-512 credentials
# (once: an existing log directory is left alone), then the image's start script, which reads the
# KAFKA_* variables and finds the directory formatted. To change the password later, inside the
# container: kafka-configs.sh --bootstrap-server localhost:9094 --alter --entity-type users
#   --entity-name <user> --add-config 'SCRAM-SHA-512=[password=...]'
# (ACLs can be written the same way with kafka-acls.sh through the loopback listener
# localhost:9094, whose principal User:ANONYMOUS is a super user; the kafka-acls service does it
# over SASL_SSL as the admin user.)
set -euo pipefail
: "${CLUSTER_ID:?}" "${KAFKA_LOG_DIRS:?}" "${KP_SCRAM_USERS:?}"
if [ ! -e "$KAFKA_LOG_DIRS/meta.properties" ]; then
  # what the storage tool needs to know of the node; the full server.properties comes later
  format_config="$(mktemp)"
  cat > "$format_config" <<PROPERTIES
process.roles=$KAFKA_PROCESS_ROLES
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_CONTROLLER_QUORUM_VOTERS
controller.listener.names=$KAFKA_CONTROLLER_LISTENER_NAMES
listeners=LOCAL://localhost:9094,CONTROLLER://localhost:9093
listener.security.protocol.map=LOCAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=LOCAL
log.dirs=$KAFKA_LOG_DIRS
PROPERTIES
  scram=()
  for user in $KP_SCRAM_USERS; do  # name=password, separated by blanks
    scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%=*},password=${user#*=}]")
  done
  /opt/kafka/bin/kafka-storage.sh format --cluster-id "$CLUSTER_ID" --config "$format_config" "${scram[@]}"
  rm -f "$format_config"
fi
exec /etc/kafka/docker/run
