# Sourced by the scripts that fetch Debian packages of other releases
# (bullseye, bookworm-backports, trixie, forky): apt through a private
# configuration per suite, so that the machine's own sources and package
# lists are never touched.
#
#   suite_apt SUITE apt-get|apt-cache ARGS...
#
# The configuration lives in
#   ${HVPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvpatch}/apt/SUITE/
#     sources.list  lists/  archives/  updated   (updated: time of the last update)
# and is refreshed when older than a day. The mirror is the machine's
# (HVPATCH_DEBIAN_MIRROR, default http://deb.debian.org/debian).
# The machine's installed packages are not seen either (an empty dpkg
# status): an installed newer version of a package the suite also has
# (the machine's linux-kbuild-6.1 for bookworm's) would be apt's candidate,
# and apt-get download finds no source for it.

debian_suites=(bullseye bookworm bookworm-backports trixie forky)

suite_is_known() {
    local s
    for s in "${debian_suites[@]}"; do [[ $1 == "$s" ]] && return 0; done
    return 1
}

suite_apt_dir() {
    echo "${HVPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvpatch}/apt/$1"
}

suite_apt_options() {
    local dir
    dir=$(suite_apt_dir "$1")
    echo "-o Dir::Etc::sourcelist=$dir/sources.list -o Dir::Etc::sourceparts=- \
-o Dir::State::Lists=$dir/lists -o Dir::Cache::archives=$dir/archives \
-o Dir::Cache::pkgcache=$dir/pkgcache.bin -o Dir::Cache::srcpkgcache=$dir/srcpkgcache.bin \
-o Dir::State::status=/dev/null \
-o APT::Sandbox::User=root -o Acquire::Check-Valid-Until=false"
}

# Writes the suite's sources.list and updates its lists when missing or
# older than a day. Logs to stderr.
suite_apt_prepare() {
    local suite=$1 dir mirror keyring
    suite_is_known "$suite" || { echo "unknown Debian suite '$suite' (${debian_suites[*]})" >&2; return 1; }
    dir=$(suite_apt_dir "$suite")
    mirror=${HVPATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -f $keyring ]] || { echo "$keyring not found (install debian-archive-keyring)" >&2; return 1; }
    mkdir -p "$dir/lists/partial" "$dir/archives/partial"
    local want="deb [signed-by=$keyring] $mirror $suite main"
    if [[ ! -f $dir/sources.list || $(<"$dir/sources.list") != "$want" ]]; then
        echo "$want" > "$dir/sources.list"
        rm -f "$dir/updated"
    fi
    if [[ ! -f $dir/updated ]] || (($(date +%s) - $(stat -c %Y "$dir/updated") > 86400)); then
        echo "apt-get update for $suite (private lists in $dir)" >&2
        # shellcheck disable=SC2046
        apt-get $(suite_apt_options "$suite") -qq update >&2 || {
            echo "apt-get update of $suite failed" >&2
            return 1
        }
        touch "$dir/updated"
    fi
}

suite_apt() {
    local suite=$1 tool=$2
    shift 2
    suite_apt_prepare "$suite" || return 1
    # shellcheck disable=SC2046
    "$tool" $(suite_apt_options "$suite") "$@"
}
