#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) on loopback,
# from jars that Maven pulls from Maven Central (see pom.xml). No Docker, no Apache mirrors.
#
#   broker.sh fetch
#   broker.sh start  --data-dir DIR [--port P] [--controller-port C] [--timeout SECONDS]
#   broker.sh stop   --data-dir DIR
#   broker.sh kill   --data-dir DIR     (SIGKILL, for crash tests)
#   broker.sh status --data-dir DIR
#
# `start` prints the bootstrap address (127.0.0.1:P) as its last stdout line. DIR holds
# everything of one broker: generated server.properties, the KRaft log dirs, logs/ and the pid
# file. Restarting from the same DIR keeps its topics and offsets: storage is formatted only once.
#
# Environment: KAFKA_HEAP_OPTS (default -Xms256m -Xmx768m), KAFKA_START_TIMEOUT (default 90 s),
# KAFKA_STOP_TIMEOUT (default 30 s), CELLWATCH_KAFKA_LIBS (jar cache, default
# <repo>/.cache/kafka/libs), JAVA_HOME.
#
# Exit codes: 0 ok (including "already running" with the same ports), 1 error, 2 usage,
# 3 status: not running, 4 a port is taken by another process, 5 a broker from DIR is already
# running on other ports, 6 broker did not become ready in time.

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT
readonly POM="${SCRIPT_DIR}/pom.xml"
readonly TEMPLATE="${SCRIPT_DIR}/server.properties.template"
readonly LOG4J_CONFIG="${SCRIPT_DIR}/log4j2.properties"
readonly LIBS_DIR="${CELLWATCH_KAFKA_LIBS:-${REPO_ROOT}/.cache/kafka/libs}"
readonly MARKER_NAME=".fetched-pom-sha256"
readonly READY_LINE="Kafka Server started"

EXIT_NOT_RUNNING=3
EXIT_PORT_IN_USE=4
EXIT_OTHER_PORTS=5
EXIT_TIMEOUT=6

die() {
    local code=1
    if [[ "$1" =~ ^[0-9]+$ ]]; then code="$1"; shift; fi
    echo "broker.sh: $*" >&2
    exit "${code}"
}

usage() {
    sed -n '4,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

pom_hash() {
    sha256sum "${POM}" | cut -d' ' -f1
}

libs_complete() {
    [[ -f "${LIBS_DIR}/${MARKER_NAME}" ]] && [[ "$(cat "${LIBS_DIR}/${MARKER_NAME}")" == "$(pom_hash)" ]]
}

cmd_fetch() {
    if libs_complete; then
        echo "kafka jars already in ${LIBS_DIR}"
        return 0
    fi
    command -v mvn >/dev/null 2>&1 \
        || die "mvn not found: install Maven (apt-get install maven, or bash deploy/install-system-deps.sh)"
    local parent
    parent="$(dirname "${LIBS_DIR}")"
    mkdir -p "${parent}"
    # Parallel callers (e.g. several test sessions) must not copy into the same folder at once.
    exec 8>"${parent}/.fetch.lock"
    flock 8
    if libs_complete; then
        exec 8>&-
        echo "kafka jars already in ${LIBS_DIR}"
        return 0
    fi
    # Copy into a scratch folder and swap it in whole, so an interrupted fetch never leaves a
    # half-filled cache that looks usable.
    local staging="${LIBS_DIR}.partial.$$"
    rm -rf "${staging}"
    echo "fetching kafka jars from Maven Central into ${LIBS_DIR} ..." >&2
    # Maven 3.8 still emits colour resets with -B -q; strip them (pipefail keeps mvn's status).
    if ! mvn -q -B -Dstyle.color=never -f "${POM}" dependency:copy-dependencies \
            -DoutputDirectory="${staging}" -DincludeScope=runtime 2>&1 \
            | sed -e $'s/\x1b\\[[0-9;]*m//g' -e '/^$/d' >&2; then
        rm -rf "${staging}"
        die "mvn dependency:copy-dependencies failed (see the output above)"
    fi
    pom_hash >"${staging}/${MARKER_NAME}"
    rm -rf "${LIBS_DIR}"
    mv "${staging}" "${LIBS_DIR}"
    exec 8>&-
    echo "kafka jars ready in ${LIBS_DIR} ($(du -sh "${LIBS_DIR}" | cut -f1))"
}

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
        echo "${JAVA_HOME}/bin/java"
    elif command -v java >/dev/null 2>&1; then
        command -v java
    else
        die "java not found: Kafka 4 needs Java 17+ (apt-get install openjdk-17-jre-headless)"
    fi
}

check_java_version() {
    local java="$1" line major minor
    # Not `java -version | head`: under pipefail java's SIGPIPE would count as a failure. The
    # version may follow a "Picked up JAVA_TOOL_OPTIONS" line, hence the search.
    line="$("${java}" -version 2>&1)" || die "${java} -version failed: ${line}"
    line="$(grep -m1 'version "' <<<"${line}")" || die "cannot find a Java version in: ${line}"
    # `openjdk version "17.0.15" ...` or, for old JVMs, `java version "1.8.0_392"`.
    major="$(sed -E 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/' <<<"${line}")"
    read -r major minor <<<"${major}"
    if [[ "${major}" == "1" ]]; then major="${minor}"; fi
    [[ "${major}" =~ ^[0-9]+$ ]] || die "cannot parse Java version from: ${line}"
    ((major >= 17)) || die "Kafka 4 needs Java 17+, found ${line} (apt-get install openjdk-17-jre-headless)"
}

# --- per-data-dir helpers -------------------------------------------------------------------

DATA_DIR=""
PORT=""
CONTROLLER_PORT=""
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"

parse_args() {
    while (($#)); do
        case "$1" in
            --data-dir) DATA_DIR="${2:?--data-dir needs a value}"; shift 2 ;;
            --port) PORT="${2:?--port needs a value}"; shift 2 ;;
            --controller-port) CONTROLLER_PORT="${2:?--controller-port needs a value}"; shift 2 ;;
            --timeout) START_TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
            -h|--help) usage ;;
            *) echo "broker.sh: unknown argument: $1" >&2; usage ;;
        esac
    done
    [[ -n "${DATA_DIR}" ]] || { echo "broker.sh: --data-dir is required" >&2; usage; }
    for value in "${PORT}" "${CONTROLLER_PORT}" "${START_TIMEOUT}"; do
        [[ -z "${value}" || "${value}" =~ ^[0-9]+$ ]] || die 2 "not a number: ${value}"
    done
    mkdir -p "${DATA_DIR}"
    # Absolute, so the pid check can match the command line of the JVM whatever the caller's cwd.
    DATA_DIR="$(cd "${DATA_DIR}" && pwd)"
}

pid_file() { echo "${DATA_DIR}/broker.pid"; }
ports_file() { echo "${DATA_DIR}/broker.ports"; }
server_log() { echo "${DATA_DIR}/logs/server.log"; }
kraft_dir() { echo "${DATA_DIR}/kraft-logs"; }

# Prints the pid of the broker started from DATA_DIR if it is alive. The command line must match
# too: after a reboot or a SIGKILL the recorded pid may belong to an unrelated process.
running_pid() {
    local pid
    [[ -f "$(pid_file)" ]] || return 1
    pid="$(cat "$(pid_file)")"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    # Process substitution rather than a pipe into `grep -q`: under pipefail the writer's
    # SIGPIPE after an early match would turn a match into a failure.
    grep -qF -- "kafka.Kafka ${DATA_DIR}/server.properties" \
        < <(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null) || return 1
    echo "${pid}"
}

recorded_ports() {
    # Sets REC_PORT / REC_CONTROLLER_PORT from the ports this DATA_DIR was last started with.
    REC_PORT=""
    REC_CONTROLLER_PORT=""
    if [[ -f "$(ports_file)" ]]; then
        read -r REC_PORT REC_CONTROLLER_PORT <"$(ports_file)" || true
    fi
}

port_open() {
    # bash's /dev/tcp: a successful connect means something is listening there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

describe_listener() {
    if command -v ss >/dev/null 2>&1; then
        ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 1p
    fi
}

lock_data_dir() {
    # Serialises start/stop/kill on one data dir. The JVM must not inherit fd 9 (it would hold
    # the lock for its whole life), so the launch below closes it explicitly.
    exec 9>"${DATA_DIR}/.broker.lock"
    flock -w 60 9 || die "another broker.sh is still working on ${DATA_DIR}"
}

wait_for_exit() {
    local pid="$1" deadline=$((SECONDS + $2))
    while kill -0 "${pid}" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

show_log_tail() {
    local offset="${1:-0}"
    echo "---- last lines of $(server_log) ----" >&2
    if [[ -f "$(server_log)" ]]; then
        tail -c +"$((offset + 1))" "$(server_log)" | tail -n 40 >&2
    fi
    if [[ -s "${DATA_DIR}/broker.out" ]]; then
        echo "---- ${DATA_DIR}/broker.out (JVM stdout/stderr) ----" >&2
        tail -n 20 "${DATA_DIR}/broker.out" >&2
    fi
    echo "----" >&2
}

# --- subcommands ----------------------------------------------------------------------------

cmd_start() {
    parse_args "$@"
    lock_data_dir
    recorded_ports
    local formatted=false
    [[ -f "$(kraft_dir)/meta.properties" ]] && formatted=true

    # A restart reuses the ports the data dir was created with unless told otherwise.
    PORT="${PORT:-${REC_PORT:-19092}}"
    CONTROLLER_PORT="${CONTROLLER_PORT:-${REC_CONTROLLER_PORT:-19093}}"
    local bootstrap="127.0.0.1:${PORT}"

    local pid
    if pid="$(running_pid)"; then
        if [[ "${REC_PORT}" == "${PORT}" && "${REC_CONTROLLER_PORT}" == "${CONTROLLER_PORT}" ]]; then
            echo "a broker is already running at ${bootstrap} (pid ${pid}); stop it with:" \
                "bash deploy/kafka/broker.sh stop --data-dir ${DATA_DIR}" >&2
            echo "${bootstrap}"
            return 0
        fi
        die "${EXIT_OTHER_PORTS}" "a broker from ${DATA_DIR} is already running at" \
            "127.0.0.1:${REC_PORT} (pid ${pid}), not at ${bootstrap}; stop it first with:" \
            "bash deploy/kafka/broker.sh stop --data-dir ${DATA_DIR}"
    fi
    rm -f "$(pid_file)"

    # The dynamic quorum stores the controller's endpoint in the metadata log at format time; a
    # different controller port on restart would leave the node unable to find its own quorum.
    if ${formatted} && [[ -n "${REC_CONTROLLER_PORT}" && "${REC_CONTROLLER_PORT}" != "${CONTROLLER_PORT}" ]]; then
        die 2 "${DATA_DIR} was formatted with controller port ${REC_CONTROLLER_PORT};" \
            "start it with --controller-port ${REC_CONTROLLER_PORT} or use a new data dir"
    fi

    local port
    for port in "${PORT}" "${CONTROLLER_PORT}"; do
        if port_open "${port}"; then
            local who
            who="$(describe_listener "${port}")"
            die "${EXIT_PORT_IN_USE}" "port ${port} on 127.0.0.1 is already in use by another" \
                "process (not a broker from ${DATA_DIR})${who:+: ${who}}; pick other ports"
        fi
    done

    local java
    java="$(java_bin)"
    check_java_version "${java}"
    libs_complete || cmd_fetch >&2

    mkdir -p "${DATA_DIR}/logs" "$(kraft_dir)"
    sed -e "s#@PORT@#${PORT}#g" \
        -e "s#@CONTROLLER_PORT@#${CONTROLLER_PORT}#g" \
        -e "s#@LOG_DIRS@#$(kraft_dir)#g" \
        "${TEMPLATE}" >"${DATA_DIR}/server.properties"
    echo "${PORT} ${CONTROLLER_PORT}" >"$(ports_file)"

    local -a jvm_opts
    # shellcheck disable=SC2206  # KAFKA_HEAP_OPTS is a list of JVM flags on purpose.
    jvm_opts=(${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=${LOG4J_CONFIG}"
        "-Dkafka.logs.dir=${DATA_DIR}/logs"
        -cp "${LIBS_DIR}/*")

    if ! ${formatted}; then
        local cluster_id
        cluster_id="$(new_cluster_id)"
        if ! "${java}" "${jvm_opts[@]}" kafka.tools.StorageTool format --standalone \
                -t "${cluster_id}" -c "${DATA_DIR}/server.properties" \
                >"${DATA_DIR}/logs/format.out" 2>&1 9>&-; then
            cat "${DATA_DIR}/logs/format.out" >&2
            die "formatting ${DATA_DIR} failed"
        fi
        echo "formatted ${DATA_DIR} (cluster id ${cluster_id})" >&2
    fi

    # Only the part of server.log written by this run counts for readiness: earlier runs of the
    # same data dir also logged the ready line.
    local log_offset=0
    [[ -f "$(server_log)" ]] && log_offset="$(wc -c <"$(server_log)")"

    local started_at=${SECONDS}
    # setsid: the broker must survive the shell (make, pytest) that started it, and not receive
    # the Ctrl-C meant for that shell. The inner bash records its own pid, then becomes the JVM.
    # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell.
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$(pid_file)" \
        "${java}" "${jvm_opts[@]}" kafka.Kafka "${DATA_DIR}/server.properties" \
        </dev/null >"${DATA_DIR}/broker.out" 2>&1 9>&- &

    local deadline=$((SECONDS + START_TIMEOUT))
    pid=""
    while true; do
        [[ -z "${pid}" && -s "$(pid_file)" ]] && pid="$(cat "$(pid_file)")"
        if [[ -n "${pid}" ]] && ! kill -0 "${pid}" 2>/dev/null; then
            show_log_tail "${log_offset}"
            rm -f "$(pid_file)"
            die "the broker exited during startup (see the log above)"
        fi
        # A size-based rollover during startup starts server.log afresh: all of it is ours then.
        if [[ -f "$(server_log)" ]] && (($(wc -c <"$(server_log)") < log_offset)); then
            log_offset=0
        fi
        if [[ -f "$(server_log)" ]] \
                && grep -qF "${READY_LINE}" < <(tail -c +"$((log_offset + 1))" "$(server_log)") \
                && port_open "${PORT}"; then
            break
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "${log_offset}"
            die "${EXIT_TIMEOUT}" "the broker (pid ${pid:-?}) was not ready after ${START_TIMEOUT} s;" \
                "it is still running, stop it with: bash deploy/kafka/broker.sh stop --data-dir ${DATA_DIR}"
        fi
        sleep 0.2
    done
    echo "broker ready at ${bootstrap} (pid ${pid}) after $((SECONDS - started_at)) s;" \
        "logs in ${DATA_DIR}/logs" >&2
    echo "${bootstrap}"
}

new_cluster_id() {
    # Kafka cluster ids are 16 random bytes, URL-safe base64 without padding; Kafka never hands
    # out ids starting with '-' because they read like command-line options.
    local id
    while true; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "${id}" != -* ]] && break
    done
    echo "${id}"
}

cmd_stop() {
    parse_args "$@"
    lock_data_dir
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$(pid_file)"
        echo "no broker is running from ${DATA_DIR}"
        return 0
    fi
    kill -TERM "${pid}" 2>/dev/null || true
    if ! wait_for_exit "${pid}" "${STOP_TIMEOUT}"; then
        echo "broker pid ${pid} still running after ${STOP_TIMEOUT} s, sending SIGKILL" >&2
        kill -KILL "${pid}" 2>/dev/null || true
        wait_for_exit "${pid}" 10 || die "broker pid ${pid} survived SIGKILL"
    fi
    rm -f "$(pid_file)"
    echo "stopped broker from ${DATA_DIR} (pid ${pid})"
}

cmd_kill() {
    parse_args "$@"
    lock_data_dir
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$(pid_file)"
        echo "no broker is running from ${DATA_DIR}"
        return 0
    fi
    kill -KILL "${pid}" 2>/dev/null || true
    wait_for_exit "${pid}" 10 || die "broker pid ${pid} survived SIGKILL"
    rm -f "$(pid_file)"
    echo "killed broker from ${DATA_DIR} (pid ${pid})"
}

cmd_status() {
    parse_args "$@"
    recorded_ports
    local pid
    if pid="$(running_pid)"; then
        echo "running at 127.0.0.1:${REC_PORT} (pid ${pid}) from ${DATA_DIR}"
        return 0
    fi
    echo "no broker is running from ${DATA_DIR}"
    return "${EXIT_NOT_RUNNING}"
}

main() {
    (($#)) || usage
    local command="$1"
    shift
    case "${command}" in
        fetch) cmd_fetch ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        kill) cmd_kill "$@" ;;
        status) cmd_status "$@" ;;
        -h|--help|help) usage ;;
        *) echo "broker.sh: unknown command: ${command}" >&2; usage ;;
    esac
}

main "$@"
