#!/usr/bin/env bash
# The secure override's one-shot `kafka-tls` service (config/docker/compose.secure.yml), in the
# apache/kafka image: a CA made here and the broker's certificate for the names `kafka` (the
# containers) and `localhost` (the host, through the published port), with keytool only.
# Writes to $TLS_DIR (the kafka-tls volume): kafka.p12 (the broker's key and chain), its password
# in keystore_creds, and ca.pem (what clients trust, KAFKA_SSL_CAFILE). The CA's key is deleted
# once the certificate is signed. A volume that already has them is left as it is.
set -euo pipefail
cd "${TLS_DIR:?}"
if [ -s kafka.p12 ] && [ -s ca.pem ] && [ -s keystore_creds ]; then
  echo "kafka-tls: certificates already in $TLS_DIR"
  exit 0
fi
rm -f ca.p12 kafka.p12 kafka.csr kafka.crt ca.pem keystore_creds
umask 077
password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
days=825
keytool -genkeypair -alias ca -dname "CN=kafka-pipeline compose CA" -ext bc:c -keyalg EC -groupname secp256r1 \
  -validity "$days" -keystore ca.p12 -storetype PKCS12 -storepass "$password" -keypass "$password"
keytool -genkeypair -alias kafka -dname "CN=kafka" -keyalg EC -groupname secp256r1 \
  -validity "$days" -keystore kafka.p12 -storetype PKCS12 -storepass "$password" -keypass "$password"
keytool -certreq -alias kafka -keystore kafka.p12 -storepass "$password" -file kafka.csr
keytool -gencert -alias ca -keystore ca.p12 -storepass "$password" -infile kafka.csr -outfile kafka.crt -rfc \
  -validity "$days" -ext san=dns:kafka,dns:localhost -ext eku=serverAuth
keytool -exportcert -alias ca -keystore ca.p12 -storepass "$password" -rfc -file ca.pem
keytool -importcert -noprompt -alias ca -file ca.pem -keystore kafka.p12 -storepass "$password"
keytool -importcert -noprompt -alias kafka -file kafka.crt -keystore kafka.p12 -storepass "$password"
printf '%s' "$password" > keystore_creds
rm -f ca.p12 kafka.csr kafka.crt
chmod 0644 ca.pem  # public: the workers' and the host's trust anchor
echo "kafka-tls: made ca.pem and kafka.p12 in $TLS_DIR"
