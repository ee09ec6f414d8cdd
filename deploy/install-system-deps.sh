#!/usr/bin/env bash
# Install the system tools the integration tests and the local Kafka broker need, and only the
# ones that are missing:
#   prometheus, promtool        <- Debian package `prometheus`
#   java 17+ (Kafka 4 broker)   <- `openjdk-17-jre-headless`
#   mvn (fetches the Kafka jars) <- `maven`
# Idempotent: with everything present it touches nothing and needs no network. Without root or
# apt-get it only reports what is missing and exits 0, so the integration tests skip (or, under
# CI=true, fail) with the same install hint.

set -euo pipefail

missing=()

have_java_17() {
    local java line major
    if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
        java="${JAVA_HOME}/bin/java"
    else
        java="$(command -v java)" || return 1
    fi
    line="$("${java}" -version 2>&1)" || return 1
    major="$(sed -nE '/version "/{s/.*version "([0-9]+).*/\1/p;q}' <<<"${line}")"
    # Java 8 and older report "1.x"; those are too old anyway.
    [[ "${major}" =~ ^[0-9]+$ ]] && ((major >= 17))
}

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    missing+=(prometheus)
fi
have_java_17 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)

if ((${#missing[@]} == 0)); then
    echo "install-system-deps: prometheus, promtool, java 17+ and mvn are present"
    exit 0
fi

if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: missing ${missing[*]}; cannot install them here (needs root and" \
        "apt-get). Install them with: apt-get install ${missing[*]}" >&2
    exit 0
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
