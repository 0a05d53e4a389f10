#!/usr/bin/env bash
# Builds pier's .deb and .rpm, checks what is in them, installs the .deb into
# a throwaway Debian root (maintainer scripts run there, chrooted, by dpkg
# itself; the .rpm into another copy with rpm --root), and validates the
# Vagrant lab and the systemd unit.
#
# Needs root (dpkg --root chroots into the throwaway root). Installs what it
# needs (cargo-deb, cargo-generate-rpm, rpm, mmdebstrap, vagrant). Under
# CI=true a missing prerequisite fails instead of skipping.
#
# The throwaway root is a minimal Debian (mmdebstrap --variant=essential plus
# pier's dependencies), downloaded with apt from the host's Debian mirror:
# about a minute. PIER_PKG_ROOT_TAR=/path/root.tar reuses one made before
# (mmdebstrap writes a tarball when the target ends in .tar).
set -euo pipefail
cd "$(dirname "$0")/.."

CI=${CI:-false}
fails=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*" >&2; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}
skip() {
    if [ "$CI" = true ]; then fail "$* (required under CI=true)"; else echo "  skip  $*" >&2; fi
}
section() { printf '== %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { skip "package tests need root"; exit $((fails > 0)); }

# ---- prerequisites -----------------------------------------------------------
export PATH="$PATH:$HOME/.cargo/bin"
need_pkgs=()
for pair in rpm:rpm mmdebstrap:mmdebstrap systemd-analyze:systemd vagrant:vagrant ruby:ruby; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    section "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # vagrant is optional outside CI (it may be missing from a mirror).
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null ||
        apt-get install -y -qq --no-install-recommends "${need_pkgs[@]/vagrant/}" >/dev/null
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
command -v cargo-generate-rpm >/dev/null 2>&1 || cargo install cargo-generate-rpm --locked --quiet

work=$(mktemp -d /tmp/pier-package.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# ---- build -------------------------------------------------------------------
section "cargo build --release, cargo deb --no-build --strip, cargo generate-rpm"
cargo build --release --quiet --bin pier
# The release profile keeps debug info (benchmarks, profiling): 130 MB, and
# compressing that takes minutes. cargo deb --strip packages a stripped copy;
# cargo generate-rpm has no such flag, so it gets one in target/pkg/release/
# (it maps target/release/ in its asset list onto --target-dir).
mkdir -p target/pkg/release target/debian target/generate-rpm
strip -o target/pkg/release/pier target/release/pier
rm -f target/debian/pier_*.deb target/generate-rpm/pier-*.rpm
cargo deb --no-build --strip -o target/debian/ --quiet >/dev/null
cargo generate-rpm --target-dir target/pkg -o target/generate-rpm/ >/dev/null
deb=$(ls target/debian/pier_*.deb)
rpm=$(ls target/generate-rpm/pier-*.rpm)
echo "  $deb ($(du -h "$deb" | cut -f1)), $rpm ($(du -h "$rpm" | cut -f1))"

# ---- the .deb's contents -------------------------------------------------------
section ".deb: files, modes, conffiles, maintainer scripts"
# "mode owner path" for every regular file, e.g. "-rwxr-xr-x root/root ./usr/bin/pier"
dpkg-deb --fsys-tarfile "$deb" | tar -tv | awk '$1 !~ /^d/ {print $1, $2, $6}' | sort -k3 >"$work/files"
expect_file() { # MODE PATH
    if grep -qxE -- "$1 (root/root|0/0) \./$2" "$work/files"; then pass "$2 $1 root"; else
        fail "$2: want $1 owned by root, have: $(grep -F "./$2" "$work/files" || echo missing)"
    fi
}
expect_file -rwxr-xr-x usr/bin/pier
expect_file -rw-r----- etc/pier/pier.toml
expect_file -rw-r--r-- usr/lib/systemd/system/pier.service
expect_file -rw-r--r-- usr/lib/sysusers.d/pier.conf
expect_file -rw-r--r-- usr/share/doc/pier/README.md
expect_file -rw-r--r-- usr/share/doc/pier/rbac.yaml
expect_file -rw-r--r-- usr/share/doc/pier/install.md
expect_file -rw-r--r-- usr/share/doc/pier/troubleshooting.md
# Nothing else outside the docs (and the changelog/copyright cargo-deb adds).
others=$(awk '{print $3}' "$work/files" | grep -vE '^\./(usr/bin/pier|etc/pier/pier\.toml|usr/lib/systemd/system/pier\.service|usr/lib/sysusers\.d/pier\.conf|usr/share/doc/pier/.*)$' || true)
if [ -z "$others" ]; then pass "no other files"; else fail "unexpected files: $others"; fi

mkdir -p "$work/control"
dpkg-deb -e "$deb" "$work/control"
if [ "$(cat "$work/control/conffiles")" = /etc/pier/pier.toml ]; then pass "conffiles: /etc/pier/pier.toml"; else
    fail "conffiles: $(tr '\n' ' ' <"$work/control/conffiles")"
fi
depends=$(dpkg-deb -f "$deb" Depends)
for dep in nftables iproute2 "systemd | systemd-standalone-sysusers" libc6; do
    case "$depends" in *"$dep"*) pass "Depends: $dep" ;; *) fail "Depends lacks $dep: $depends" ;; esac
done
for script in postinst postrm; do
    [ -f "$work/control/$script" ] || { fail "no $script"; continue; }
    check "$script parses (sh -n)" sh -n "$work/control/$script"
    check "$script is 0755" test "$(stat -c %a "$work/control/$script")" = 755
    if grep -q '#DEBHELPER#' "$work/control/$script"; then fail "$script: #DEBHELPER# not substituted"; fi
done
check "postinst creates the user with systemd-sysusers pier.conf" grep -q 'systemd-sysusers.* pier.conf' "$work/control/postinst"
check "postinst makes the config root:pier" grep -q 'chown root:pier' "$work/control/postinst"
check "postinst: user created before the chown" awk '/systemd-sysusers/ {u=NR} /chown root:pier/ {c=NR} END {exit !(u && c && u < c)}' "$work/control/postinst"
check "postrm purges /var/lib/pier" grep -q 'rm -rf /var/lib/pier' "$work/control/postrm"
# Installed, not enabled or started (the example config is not meant to run
# as is); an upgrade restarts a running pier (try-restart).
if grep -qE 'deb-systemd-invoke (start|restart) |systemctl( --system)? (start|restart|enable)|deb-systemd-helper enable pier' "$work/control/postinst" &&
    ! grep -qE 'was-enabled' "$work/control/postinst"; then
    fail "postinst enables or starts pier on a fresh install"
else
    pass "postinst neither enables nor starts pier on a fresh install"
fi
check "postinst restarts a running pier on upgrade (try-restart)" grep -q 'try-restart pier.service' "$work/control/postinst"

# ---- the systemd unit --------------------------------------------------------
section "pier.service: sandbox and capabilities"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/systemd/system/pier.service >"$work/pier.service"
unit_has() { # KEY VALUE: the unit sets KEY to exactly VALUE
    if grep -qxF "$1=$2" "$work/pier.service"; then pass "$1=$2"; else
        fail "$1: want '$2', have '$(grep -E "^$1=" "$work/pier.service" | tr '\n' ' ')'"
    fi
}
caps="CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"
unit_has User pier
unit_has Group pier
unit_has CapabilityBoundingSet "$caps"
unit_has AmbientCapabilities "$caps"
unit_has NoNewPrivileges yes
unit_has ProtectSystem strict
unit_has StateDirectory pier
unit_has RuntimeDirectory pier
unit_has ProtectHome yes
if [ "$(grep -c '^CapabilityBoundingSet=' "$work/pier.service")" = 1 ]; then pass "one CapabilityBoundingSet line"; else
    fail "several CapabilityBoundingSet lines (they add up)"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify checks that ExecStart's binary exists: point it at the built one
    # (the throwaway root below checks the installed unit as it is).
    mkdir -p "$work/verify"
    sed "s#/usr/bin/pier#$PWD/target/release/pier#g" "$work/pier.service" >"$work/verify/pier.service"
    if out=$(systemd-analyze verify "$work/verify/pier.service" 2>&1) && [ -z "$out" ]; then pass "systemd-analyze verify: clean"; else
        fail "systemd-analyze verify: $out"
    fi
    exposure=$(systemd-analyze security --offline=yes "$work/pier.service" 2>/dev/null | sed -n 's/.*Overall exposure level for pier.service: \([0-9.]*\).*/\1/p')
    if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN {exit !(e <= 3.0)}'; then
        pass "systemd-analyze security: exposure $exposure (<= 3.0)"
    else
        fail "systemd-analyze security: exposure '${exposure:-?}' (want <= 3.0)"
    fi
else
    skip "systemd-analyze not installed"
fi

# ---- install into a throwaway root ------------------------------------------
section "install the .deb into a throwaway Debian root (its own dpkg, chrooted)"
root="$work/root"
mkdir -p "$root"
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
if [ -n "${PIER_PKG_ROOT_TAR:-}" ] && [ -f "$PIER_PKG_ROOT_TAR" ]; then
    tar -xf "$PIER_PKG_ROOT_TAR" -C "$root"
elif command -v mmdebstrap >/dev/null 2>&1; then
    # Essential packages only, plus what pier depends on; systemd-standalone-
    # sysusers instead of systemd (no init in a chroot); passwd for the rpm's
    # %pre (useradd).
    mmdebstrap --quiet --variant=essential \
        --include=nftables,iproute2,systemd-standalone-sysusers,passwd \
        "$suite" "$root" http://deb.debian.org/debian >"$work/mmdebstrap.log" 2>&1 ||
        { tail -n 20 "$work/mmdebstrap.log" >&2; fail "mmdebstrap $suite failed"; }
else
    skip "mmdebstrap not installed"
fi
if [ -x "$root/usr/bin/dpkg" ]; then
    # A second, untouched copy for the rpm below.
    cp -a "$root" "$work/root-rpm"
    cp "$deb" "$root/tmp/pier.deb"
    # The root's own dpkg, chrooted: the maintainer scripts run there as on
    # a real host (systemd-sysusers, chown, dpkg-statoverride), and nothing
    # touches the host's users or files.
    if chroot "$root" dpkg -i /tmp/pier.deb >"$work/dpkg.log" 2>&1; then
        pass "dpkg -i (preinst/postinst ran in the root)"
    else
        cat "$work/dpkg.log" >&2
        fail "dpkg -i failed"
    fi
    check "user pier exists" chroot "$root" getent passwd pier
    check "group pier exists" chroot "$root" getent group pier
    check "user pier is a system user (uid < 1000)" test "$(chroot "$root" id -u pier)" -lt 1000
    check "user pier has no login shell" sh -c "chroot '$root' getent passwd pier | grep -qE ':(/usr/sbin/nologin|/sbin/nologin|/bin/false)\$'"
    # stat in the host resolves names with the host's passwd: compare ids.
    gid=$(chroot "$root" getent group pier | cut -d: -f3)
    check "/etc/pier/pier.toml group is pier's gid ($gid)" test "$(stat -c '%u:%g %a' "$root/etc/pier/pier.toml")" = "0:$gid 640"
    check "/etc/pier is 0:$gid 0750" test "$(stat -c '%u:%g %a' "$root/etc/pier")" = "0:$gid 750"
    check "dpkg lists /etc/pier/pier.toml as a conffile" sh -c "chroot '$root' dpkg-query -W -f='\${Conffiles}' pier | grep -q '^ /etc/pier/pier.toml [0-9a-f]\{32\}'"
    check "pier.service installed" test -f "$root/usr/lib/systemd/system/pier.service"
    check "pier check passes on the installed config, as user pier" \
        chroot --userspec=pier:pier "$root" /usr/bin/pier check --config /etc/pier/pier.toml
    check "pier check passes on the installed config, as root" chroot "$root" pier check
    # An upgrade (here: the same version again) keeps an edited conffile.
    sed -i 's/^router_id = .*/router_id = "10.66.0.99"/' "$root/etc/pier/pier.toml"
    chroot "$root" dpkg -i --force-confold /tmp/pier.deb >"$work/dpkg2.log" 2>&1 || { cat "$work/dpkg2.log" >&2; fail "reinstall"; }
    check "reinstall keeps the edited conffile" grep -q '10.66.0.99' "$root/etc/pier/pier.toml"
    check "reinstall keeps it root:pier 0640" test "$(stat -c '%u:%g %a' "$root/etc/pier/pier.toml")" = "0:$gid 640"
    mkdir -p "$root/var/lib/pier" && touch "$root/var/lib/pier/db"
    chroot "$root" dpkg --purge pier >"$work/dpkg3.log" 2>&1 || { cat "$work/dpkg3.log" >&2; fail "purge"; }
    check "purge removes the binary" test ! -e "$root/usr/bin/pier"
    check "purge removes the conffile" test ! -e "$root/etc/pier/pier.toml"
    check "purge removes /var/lib/pier" test ! -e "$root/var/lib/pier"
else
    [ "$fails" -gt 0 ] || skip "no throwaway root"
fi

# ---- the .rpm ------------------------------------------------------------------
section ".rpm: files, config, scriptlets, requires"
if command -v rpm >/dev/null 2>&1; then
    rpm -qlp "$rpm" 2>/dev/null >"$work/rpm-files"
    for f in /usr/bin/pier /etc/pier/pier.toml /usr/lib/systemd/system/pier.service /usr/lib/sysusers.d/pier.conf /usr/share/doc/pier/rbac.yaml /usr/share/doc/pier/install.md; do
        check "rpm has $f" grep -qxF "$f" "$work/rpm-files"
    done
    check "rpm: /etc/pier/pier.toml is %config(noreplace)" sh -c "rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' '$rpm' 2>/dev/null | grep -qE '^cn +/etc/pier/pier.toml\$'"
    # --dump: path size mtime digest mode owner group ...
    rpm -qp --dump "$rpm" 2>/dev/null >"$work/rpm-dump"
    check "rpm: pier 0755 root root" awk '$1 == "/usr/bin/pier" && $5 == "0100755" && $6 == "root" && $7 == "root" {f=1} END {exit !f}' "$work/rpm-dump"
    check "rpm: pier.toml 0640 root pier" awk '$1 == "/etc/pier/pier.toml" && $5 == "0100640" && $6 == "root" && $7 == "pier" {f=1} END {exit !f}' "$work/rpm-dump"
    rpm -qp --scripts "$rpm" 2>/dev/null >"$work/rpm-scripts"
    for s in preinstall postinstall preuninstall postuninstall; do
        check "rpm has a $s scriptlet" grep -q "^$s scriptlet" "$work/rpm-scripts"
    done
    check "rpm %pre creates user and group pier" sh -c "grep -q 'groupadd -r pier' '$work/rpm-scripts' && grep -q 'useradd -r -g pier' '$work/rpm-scripts'"
    for s in pre post preun postun; do check "packaging/rpm/$s parses (sh -n)" sh -n "packaging/rpm/$s"; done
    rpm -qpR "$rpm" 2>/dev/null >"$work/rpm-requires"
    for r in nftables iproute /bin/sh; do check "rpm requires $r" grep -q "^$r" "$work/rpm-requires"; done
    # Install it into the other copy of the throwaway root: rpm --root runs
    # the scriptlets chrooted there. --nodeps: the dependencies are
    # installed, but by dpkg, so rpm's database does not know them.
    rr="$work/root-rpm"
    if [ -x "$rr/usr/sbin/useradd" ]; then
        rpm --root "$rr" --initdb
        if rpm --root "$rr" -i --nodeps "$rpm" >"$work/rpm-install.log" 2>&1 && ! grep -qi 'warning: \(user\|group\)' "$work/rpm-install.log"; then
            pass "rpm -i into the throwaway root (scriptlets ran there)"
        else
            cat "$work/rpm-install.log" >&2
            fail "rpm -i"
        fi
        rgid=$(chroot "$rr" getent group pier | cut -d: -f3)
        check "rpm: user pier created by %pre" chroot "$rr" getent passwd pier
        check "rpm: /etc/pier/pier.toml is 0:$rgid 0640" test "$(stat -c '%u:%g %a' "$rr/etc/pier/pier.toml")" = "0:${rgid:-x} 640"
        check "rpm: /etc/pier is 0:$rgid 0750 (%post)" test "$(stat -c '%u:%g %a' "$rr/etc/pier")" = "0:${rgid:-x} 750"
        check "rpm: pier check as user pier" chroot --userspec=pier:pier "$rr" /usr/bin/pier check --config /etc/pier/pier.toml
        rpm --root "$rr" -e pier >"$work/rpm-erase.log" 2>&1 || { cat "$work/rpm-erase.log" >&2; fail "rpm -e"; }
        check "rpm -e removes the binary" test ! -e "$rr/usr/bin/pier"
    else
        [ "$fails" -gt 0 ] || skip "no throwaway root with useradd for the rpm"
    fi
else
    skip "rpm not installed"
fi

# ---- the Vagrant lab ---------------------------------------------------------
section "vagrant/: Vagrantfile and provisioning scripts"
for s in vagrant/provision/*.sh; do check "$s parses (sh -n)" sh -n "$s"; done
# The configs the provisioners write, as they would be written.
heredoc() { # FILE MARKER: the body of `<<MARKER` in FILE, lab addresses filled in
    sed -n "/<<$2\$/,/^$2\$/p" "$1" | sed '1d;$d' |
        sed 's/\$GW/10.66.2.2/g; s/\$ROUTER/10.66.2.254/g; s/\$LAN/eth1/g'
}
heredoc vagrant/provision/gateway.sh TOML >"$work/vagrant-pier.toml"
check "vagrant gateway's pier.toml: pier check" target/release/pier check --config "$work/vagrant-pier.toml"
heredoc vagrant/provision/router.sh BIRD >"$work/vagrant-bird.conf"
if command -v bird >/dev/null 2>&1; then
    check "vagrant router's bird.conf: bird -p" bird -p -c "$work/vagrant-bird.conf"
else
    skip "bird not installed"
fi
if command -v ruby >/dev/null 2>&1; then check "Vagrantfile: ruby -c" ruby -c vagrant/Vagrantfile; else skip "ruby not installed"; fi
if command -v vagrant >/dev/null 2>&1; then
    # No provider plugin here (libvirt/VirtualBox): validate everything else.
    if out=$(cd vagrant && env -u VAGRANT_DEFAULT_PROVIDER PIER_DEB="$PWD/../$deb" vagrant validate --ignore-provider 2>&1); then
        pass "vagrant validate --ignore-provider"
    else
        fail "vagrant validate: $out"
    fi
else
    skip "vagrant not installed"
fi

section "package checks: $fails failure(s)"
[ "$fails" = 0 ]
