#!/usr/bin/env bash
# Credentials for the central broker, made with openssl and mosquitto_passwd.
#
#   make-credentials.sh ca DIR HOST      a CA and a server certificate for HOST (a DNS name or an IP address)
#   make-credentials.sh user DIR NAME    a random password for NAME (a device id, relay, console, operator or dashboard),
#                                        added to DIR/passwd and written to DIR/NAME.password (mode 600)
#
# Give each unit ca.crt and its NAME.password (edge.toml: mqtt.username = NAME, mqtt.password_file, mqtt.tls.ca_file).
set -euo pipefail
cmd=${1:?usage: make-credentials.sh ca DIR HOST | user DIR NAME}
dir=${2:?directory}
mkdir -p "$dir"
umask 077

# Mosquitto 2 reads its key, password file and ACL after dropping to its own user: when run as root, give that
# user's group read access to what the broker needs (and nothing else: ca.key and the *.password files stay root's).
for_broker() {
  if [[ $(id -u) == 0 ]] && getent group mosquitto >/dev/null; then chgrp mosquitto "$@" && chmod 640 "$@"; fi
}
case "$cmd" in
  ca)
    host=${3:?server host name or IP}
    openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=defect-edge fleet CA" \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    if [[ $host =~ ^[0-9.]+$ ]]; then san="IP:$host"; else san="DNS:$host"; fi
    openssl req -newkey rsa:3072 -nodes -subj "/CN=$host" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > "$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 825 \
      -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
    rm -f "$dir/server.csr" "$dir/server.ext"
    chmod 644 "$dir/ca.crt" "$dir/server.crt"
    for_broker "$dir/server.key"
    echo "CA and server certificate for $host in $dir (keep ca.key offline)"
    ;;
  user)
    name=${3:?user name}
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || { echo "not a valid device id: $name" >&2; exit 2; }
    pw=$(openssl rand -base64 24)
    if [[ -f "$dir/passwd" ]]; then mosquitto_passwd -b "$dir/passwd" "$name" "$pw"
    else mosquitto_passwd -b -c "$dir/passwd" "$name" "$pw"; fi
    for_broker "$dir/passwd"
    printf '%s\n' "$pw" > "$dir/$name.password"
    echo "user $name added to $dir/passwd; password in $dir/$name.password"
    ;;
  *) echo "usage: make-credentials.sh ca DIR HOST | user DIR NAME" >&2; exit 2 ;;
esac
