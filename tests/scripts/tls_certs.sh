#!/usr/bin/env bash
# A throwaway certificate authority for TLS tests: DIR/ca.pem (the CA), DIR/server.pem and
# DIR/server-key.pem (a server certificate for 127.0.0.1 and localhost, signed by the CA),
# DIR/client.pem and DIR/client-key.pem (a client certificate for X.509 users), and DIR/other-ca.pem
# (a CA that signed nothing here: the "wrong CA" of a test).
#   tls_certs.sh DIR
set -euo pipefail
dir=${1:?directory}
mkdir -p "$dir"; cd "$dir"
[ -f ca.pem ] && exit 0
q() { openssl "$@" >/dev/null 2>&1; }
q req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=binlake test CA" -keyout ca-key.pem -out ca.pem
q req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=binlake other CA" -keyout other-ca-key.pem -out other-ca.pem
printf "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" > server.ext
q req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server-key.pem -out server.csr
q x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile server.ext -out server.pem
printf "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n" > client.ext
q req -newkey rsa:2048 -nodes -subj "/CN=binlake-client" -keyout client-key.pem -out client.csr
q x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile client.ext -out client.pem
chmod 644 ./*.pem
