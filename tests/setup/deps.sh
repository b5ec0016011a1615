#!/usr/bin/env bash
# Installs what the build, the tests and the benchmarks need on a bare Debian 12
# machine. Idempotent: every step checks before it acts. Run as root (CI and
# our dev VMs are root); `make test` and `make bench` call it.
#
#   deps.sh                           install what is missing
#   deps.sh --print-backports-source  print the bookworm-backports entry this
#                                     machine would get, change nothing
#
# VENDETTA_APT_ETC (default /etc/apt) is where the apt sources are read and,
# when needed, the backports entry is written: point it at a scratch copy to
# try this script without touching the machine's sources.
set -euo pipefail

apt_etc=${VENDETTA_APT_ETC:-/etc/apt}

# The bookworm-backports entry, in deb822 form, on the mirror and keyring of
# the machine's own bookworm entry: the project never names an archive
# address of its own. Read from sources.list.d/debian.sources (the `URIs:`
# and `Signed-By:` of the first enabled `deb` stanza whose Suites include
# `bookworm`), else from a one-line `deb ... bookworm ...` in sources.list.
# Prints nothing when neither has one.
backports_source() {
    local deb822="$apt_etc/sources.list.d/debian.sources" oneline="$apt_etc/sources.list"
    local entry=""
    if [ -r "$deb822" ]; then
        entry=$(awk '
            function word(list, w) { return (" " list " ") ~ (" " w " ") }
            function flush() {
                if (!done && word(types, "deb") && word(suites, "bookworm") && uris != "" && tolower(enabled) != "no") {
                    print "Types: deb"
                    print "URIs: " uris
                    print "Suites: bookworm-backports"
                    print "Components: main"
                    # An inline key starts on the next line: no space after the colon then.
                    if (signed != "") print "Signed-By:" (substr(signed, 1, 1) == "\n" ? "" : " ") signed
                    done = 1
                }
                types = suites = uris = signed = enabled = field = ""
            }
            /^#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ {
                # A continuation line: more URIs, or the lines of an inline key.
                if (field == "signed-by") signed = signed "\n" $0
                else if (field == "uris") { v = $0; gsub(/^[ \t]+|[ \t]+$/, "", v); uris = uris " " v }
                next
            }
            {
                i = index($0, ":")
                if (i == 0) { field = ""; next }
                field = tolower(substr($0, 1, i - 1))
                v = substr($0, i + 1); gsub(/^[ \t]+|[ \t]+$/, "", v); gsub(/[ \t]+/, " ", v)
                if (field == "types") types = v
                else if (field == "suites") suites = v
                else if (field == "uris") uris = v
                else if (field == "signed-by") signed = v
                else if (field == "enabled") enabled = v
            }
            END { flush() }
        ' "$deb822")
    fi
    if [ -z "$entry" ] && [ -r "$oneline" ]; then
        entry=$(awk '
            { sub(/#.*/, "") }
            $1 == "deb" {
                n = 2; opts = ""
                if ($2 ~ /^\[/) {
                    while (n <= NF) { opts = opts " " $n; if ($n ~ /\]$/) { n++; break } n++ }
                }
                if ($(n + 1) != "bookworm") next
                print "Types: deb"
                print "URIs: " $n
                print "Suites: bookworm-backports"
                print "Components: main"
                if (match(opts, /signed-by=[^] ]+/)) print "Signed-By: " substr(opts, RSTART + 10, RLENGTH - 10)
                exit
            }
        ' "$oneline")
    fi
    printf '%s' "$entry"
}

no_bookworm_entry() {
    echo "deps.sh: found no bookworm entry in $apt_etc/sources.list.d/debian.sources or $apt_etc/sources.list," >&2
    echo "deps.sh: so there is no mirror to take bookworm-backports from; add a bookworm-backports entry" >&2
    echo "deps.sh: on your Debian mirror (see sources.list(5)) and run this script again" >&2
}

if [ "${1:-}" = --print-backports-source ]; then
    entry=$(backports_source)
    [ -n "$entry" ] || { no_bookworm_entry; exit 1; }
    printf '%s\n' "$entry"
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: deps.sh [--print-backports-source]" >&2
    exit 2
fi

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

have musl-gcc        || need_apt+=(musl-tools)
have mandoc          || need_apt+=(mandoc)
have promtool        || need_apt+=(prometheus)
have lxc-start       || need_apt+=(lxc)
[ -e /usr/share/lxc/templates/lxc-busybox ] || need_apt+=(lxc-templates)
have busybox         || need_apt+=(busybox-static)
have openssl         || need_apt+=(openssl)
have wrk             || need_apt+=(wrk)
have hyperfine       || need_apt+=(hyperfine)
have sshd            || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
have curl            || need_apt+=(curl)
have python3         || need_apt+=(python3)
# The bench's slow disk (tests/bench/slowfs.py) is a FUSE file system.
/usr/bin/python3 -c 'import fusepy' 2>/dev/null || need_apt+=(python3-fusepy fuse3)

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
}

if [ "${#need_apt[@]}" -gt 0 ]; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# QEMU: our machines' image ships qemu-utils from bookworm-backports, which
# conflicts with bookworm's qemu-system 7.2 (a plain install fails), so
# qemu-system-x86, qemu-utils (qemu-img, only a Recommends of qemu-system-x86)
# and the guest agent come from the same backports suite.
if ! have qemu-system-x86_64 || ! have qemu-img || ! { have qemu-ga || [ -x /usr/sbin/qemu-ga ]; }; then
    src="$apt_etc/sources.list.d/vendetta-backports.sources"
    if ! grep -rqs 'bookworm-backports' "$apt_etc/sources.list" "$apt_etc/sources.list.d/"; then
        entry=$(backports_source)
        [ -n "$entry" ] || { no_bookworm_entry; exit 1; }
        printf '%s\n' "$entry" >"$src"
        echo "deps.sh: added bookworm-backports in $src"
        apt_updated=0
    fi
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86 qemu-utils qemu-guest-agent
fi

# The static build target.
if have rustup && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl
fi

# PyJWT (with cryptography for RS256 and EdDSA): the JWT tests make their
# tokens with a real library, not with the agent's own code.
if ! python3 -c 'import jwt, cryptography' 2>/dev/null; then
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        'pyjwt>=2.8' 'cryptography>=42' \
        || { echo "deps.sh: cannot install PyJWT with pip for $(command -v python3)" >&2; exit 1; }
fi

# The small Linux guest of the QEMU provider's boot test (a Debian cloud
# kernel and a busybox + qemu-ga initramfs).
"$(dirname "$0")/guest.sh"
