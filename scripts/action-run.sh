#!/usr/bin/env bash
# The GitHub Action's step (action.yml): installs the released replayd (through install.sh:
# download, SHA-256 check, cached in the runner's tool cache) and runs the job's command
# under replay. The job fails with replayd's exit code; replayd's report (the misses and the
# closest recording of each) goes to the log, to an error annotation and to the job summary.
#
# Inputs, as action.yml passes them:
#   INPUT_SNAPSHOT     the snapshot directory (default: llmsim)
#   INPUT_RUN          the command, run with bash -c under `replayd -- ...`
#   INPUT_VERSION      the release (default: the action's own version below)
#   INPUT_RELEASE_URL  the tarball's URL (default: the GitHub release of INPUT_VERSION)
#   INPUT_SHA256       the tarball's expected SHA-256 (default: the release's .sha256 file)
#   INPUT_ARGS         more replayd options, split on whitespace (e.g. --no-network)
#   INPUT_VERIFY       `false` skips `llmsim-agent verify` on the snapshot before the replay
# The runner's environment it reads: RUNNER_TEMP (where replayd is installed),
# RUNNER_TOOL_CACHE (where the download is kept; actions/cache saves it), GITHUB_STEP_SUMMARY.
set -euo pipefail

DEFAULT_VERSION=0.1.0
REPOSITORY=https://github.com/llmsim/llmsim

die() {
    printf '::error title=llmsim::%s\n' "$*"
    exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
snapshot=${INPUT_SNAPSHOT:-llmsim}
run=${INPUT_RUN:-}
# As given for the cache directory, which action.yml names the same way; without a `v` for the URL.
given_version=${INPUT_VERSION:-$DEFAULT_VERSION}
version=${given_version#v}
url=${INPUT_RELEASE_URL:-$REPOSITORY/releases/download/v$version/llmsim-$version-x86_64-linux-musl.tar.gz}
[ -n "$run" ] || die "the 'run' input is empty: say which command to run under replay"
[ -d "$snapshot" ] || die "no snapshot directory '$snapshot' (the 'snapshot' input)"
: "${RUNNER_TEMP:?RUNNER_TEMP is not set: this script runs inside a GitHub Actions job}"
: "${RUNNER_TOOL_CACHE:?RUNNER_TOOL_CACHE is not set: this script runs inside a GitHub Actions job}"

prefix=$RUNNER_TEMP/llmsim
install_args=("$url" --prefix "$prefix" --cache "$RUNNER_TOOL_CACHE/llmsim/$given_version")
[ -z "${INPUT_SHA256:-}" ] || install_args+=(--sha256 "$INPUT_SHA256")
"$here/install.sh" "${install_args[@]}"
if [ "${INPUT_VERIFY:-true}" != false ]; then
    "$prefix/bin/llmsim-agent" verify "$snapshot" ||
        die "llmsim-agent verify found problems in $snapshot (above); fix the recording or set verify: false"
fi

read -r -a extra <<<"${INPUT_ARGS:-}"
replay=("$prefix/bin/replayd" --in "$snapshot" "${extra[@]}" -- bash -c "$run")
# replayd needs root for its cgroup hooks; it runs the command as the runner's user (SUDO_USER).
if [ "$(id -u)" -ne 0 ]; then
    replay=(sudo --preserve-env env "PATH=$PATH" "${replay[@]}")
fi

log=$RUNNER_TEMP/llmsim-replayd.log
set +e
# stderr (replayd's and the command's) reaches the log live and is kept for the report.
{ "${replay[@]}" 2>&1 1>&3 3>&- | tee "$log" >&2; code=${PIPESTATUS[0]}; } 3>&1
set -e

# replayd's closing report: from its last `replayd: served` line on (each miss is followed by
# the indented fields that differ); without one (a start-up error), its own lines.
report=$(awk '/^replayd: served /{report = ""; found = 1} found{report = report $0 "\n"}
              END{printf "%s", report}' "$log")
[ -n "$report" ] || report=$(grep '^replayd:' "$log" || true)
if [ "$code" -ne 0 ]; then
    misses=$(awk '/^replayd: miss:/{miss = 1; print; next} miss && /^[ \t]/{print; next} {miss = 0}' <<<"$report")
    message="replay of \`$run\` failed with exit code $code ($(grep -c '^replayd: miss:' <<<"$misses" || true) misses)"
    [ -z "$misses" ] || message+=$'\n'$misses
    # A workflow command takes one line (the command's output may not have ended its own):
    # %, CR and LF are escaped as GitHub reads them back.
    message=${message//%/%25}
    message=${message//$'\r'/%0D}
    message=${message//$'\n'/%0A}
    printf '\n::error title=replayd::%s\n' "$message"
fi
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    {
        printf '### llmsim replay: `%s` exited %s\n\n```\n%s\n```\n' "$run" "$code" "$report"
    } >>"$GITHUB_STEP_SUMMARY"
fi
exit "$code"
