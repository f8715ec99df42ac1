#!/usr/bin/env bash
# A local Debian base image with Python, built from Debian's packages (debootstrap), for a
# machine that reaches Debian's mirror but no image registry. It stands in for
# `python:3.11-slim` as `--build-arg BASE_IMAGE=<it>` of deploy/Dockerfile, and is the base of
# the local Kafka and PostgreSQL stand-ins (deploy/image/kafka, deploy/image/postgres).
#
# usage: deploy/image/base.sh IMAGE [MIRROR]
#   IMAGE   the tag to create; nothing is done when it already exists (the base is cached)
#   MIRROR  the Debian mirror; default: the first one apt uses on this machine
#
# The CA certificates this machine trusts beyond Debian's (/usr/local/share/ca-certificates)
# go into the image too, and pip is pointed at the system bundle, so that a build inside it
# reaches the package index the way this machine does.
set -euo pipefail

image=${1:?usage: base.sh IMAGE [MIRROR]}
suite=bookworm
packages=python3,python3-venv,ca-certificates

apt_mirror() {
    # The first http(s) URI of a Debian archive (not -security) in apt's sources.
    local sources
    sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true)
    grep -oE '^(URIs:|deb) *(\[[^]]*\] *)?https?://[^ ]+/debian/?( |$)' <<<"$sources" \
        | grep -oE 'https?://[^ ]+' | sed -n 1p
}

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image exists; kept"
    exit 0
fi
mirror=${2:-$(apt_mirror)}
[[ -n "$mirror" ]] || { echo "base.sh: no Debian mirror found in apt's sources" >&2; exit 1; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null

root=$(mktemp -d /var/tmp/ingest-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap $suite from $mirror into $root"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

bundle=/etc/ssl/certs/ca-certificates.crt
tar -C "$root" -c . | docker import \
    --change "ENV PIP_CERT=$bundle SSL_CERT_FILE=$bundle REQUESTS_CA_BUNDLE=$bundle" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$image" >/dev/null
echo "base image $image built"
