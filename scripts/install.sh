#!/usr/bin/env bash
# Installs an llmsim release tarball (llmsim-VERSION-x86_64-linux-musl.tar.gz, as
# `cargo xtask dist` writes it) from a URL into a prefix, only after checking its SHA-256.
#
#   scripts/install.sh URL [--prefix DIR] [--sha256 HEX] [--cache DIR]
#
# The expected checksum is --sha256 when given, else the one in URL.sha256 (the checksum file
# published next to the tarball). Nothing is installed from a download whose checksum is
# missing or wrong. Installs bin/llmsim-agent, bin/replayd, the manual pages and the bash,
# zsh and fish completions under DIR (default /usr/local). With --cache DIR the tarball and
# its checksum file are kept in DIR and taken from there next time, checked again each time.
# Needs bash, curl, sha256sum and tar. Exit codes: 0 installed; 2 refused (bad arguments,
# failed download, missing or wrong checksum, not an llmsim tarball), with one line on stderr.
set -euo pipefail

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 2
}

url= prefix=/usr/local expected= cache=
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --sha256) [ $# -ge 2 ] || die "--sha256 needs a checksum"; expected=$2; shift 2 ;;
        --cache) [ $# -ge 2 ] || die "--cache needs a directory"; cache=$2; shift 2 ;;
        -h|--help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) die "unknown option $1 (usage: install.sh URL [--prefix DIR] [--sha256 HEX] [--cache DIR])" ;;
        *) [ -z "$url" ] || die "one URL only (got $url and $1)"; url=$1; shift ;;
    esac
done
[ -n "$url" ] || die "usage: install.sh URL [--prefix DIR] [--sha256 HEX] [--cache DIR]"
for tool in curl sha256sum tar; do
    command -v "$tool" >/dev/null || die "$tool is missing: install it first"
done

name=${url##*/}
name=${name%%[?#]*}
case $name in
    llmsim-*.tar.gz) ;;
    *) die "$url does not name an llmsim release tarball (llmsim-VERSION-x86_64-linux-musl.tar.gz)" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
downloads=${cache:-$work/downloads}
mkdir -p "$downloads" || die "cannot create $downloads"

# download URL FILE: fetches URL into FILE unless FILE is already there (from the cache);
# on failure says why in $error and returns 1.
error=
download() {
    [ -s "$2" ] && return
    if ! error=$(curl --fail --silent --show-error --location --output "$2.part" "$1" 2>&1); then
        rm -f "$2.part"
        error=${error//$'\n'/ }
        return 1
    fi
    mv "$2.part" "$2"
}

tarball=$downloads/$name
download "$url" "$tarball" || die "cannot download $url: $error"
if [ -z "$expected" ]; then
    download "$url.sha256" "$tarball.sha256" ||
        die "no checksum for $name ($url.sha256: $error): refusing an unverified download"
    read -r expected _ <"$tarball.sha256" || true
fi
expected=${expected,,}
[[ $expected =~ ^[0-9a-f]{64}$ ]] || {
    rm -f "$tarball.sha256"
    die "no SHA-256 checksum for $name (got '${expected:0:80}'): refusing an unverified download"
}
read -r actual _ < <(sha256sum "$tarball")
if [ "$actual" != "$expected" ]; then
    rm -f "$tarball" "$tarball.sha256"
    die "checksum mismatch for $name: expected $expected, got $actual: refusing to install it"
fi

tar -xzf "$tarball" -C "$work" --no-same-owner 2>/dev/null || die "cannot unpack $name"
tree=$work/${name%.tar.gz}
[ -x "$tree/bin/replayd" ] && [ -x "$tree/bin/llmsim-agent" ] ||
    die "$name holds no bin/replayd and bin/llmsim-agent"

mkdir -p "$prefix" 2>/dev/null && [ -w "$prefix" ] || die "cannot write to $prefix (run as root, or choose --prefix)"
(cd "$tree" && find bin share -type f) | while read -r file; do
    mode=0644
    [ "${file%%/*}" = bin ] && mode=0755
    install -D -m "$mode" "$tree/$file" "$prefix/$file" || die "cannot install $prefix/$file"
done
printf 'install.sh: installed %s into %s (replayd: %s)\n' "$name" "$prefix" "$prefix/bin/replayd"
