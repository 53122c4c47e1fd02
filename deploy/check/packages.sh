# The packages part of scripts/deploy-check.sh (sourced: it uses die, note, wait_for, free_port,
# PIDS, WORK, ROOT, SLUICE and PY from there).
#
# Builds the .deb and .rpm from the binary under check (scripts/package.sh --binary), then:
#   - lintian and rpmlint: no error or warning but the justified ones in deploy/package/;
#   - the contents of both, file by file with their modes, and which are config files;
#   - the maintainer scripts enable sluice.service and start nothing;
#   - the units extracted from the package are deploy/systemd's, and pass systemd-analyze verify;
#   - each installs into a scratch root: the .deb with dpkg --root (maintainer scripts chrootless,
#     as DPKG_ROOT bootstraps do), the .rpm with rpm --root (its scriptlets chrooted, with sh and
#     systemctl copied in); sluice.service ends up enabled there, and nothing started;
#   - the install guide's steps (deploy/systemd/INSTALL.md, the block marked `guide`) in the .deb's
#     scratch root: the two settings written by its own command, then what `systemctl start`
#     would run: the unit's ExecStartPre and ExecStart with its EnvironmentFile, against a
#     sluice sim. It refuses to start before the settings are written, then drains a backlog and
#     a SIGTERM ends it with exit 0;
#   - then, in both roots, an upgrade to revision 2 keeps the edited config, and removal (and the
#     .deb's purge) takes everything away again;
#   - the binary needs no glibc newer than Amazon Linux 2023's (2.34).

PKG=$WORK/packages
mkdir -p "$PKG"
bash scripts/package.sh --binary "$SLUICE" --out "$PKG/out" >"$PKG/build.log" 2>&1 \
  || { cat "$PKG/build.log"; die "scripts/package.sh failed"; }
DEB=$(ls "$PKG"/out/sluice_*_amd64.deb)
RPM=$(ls "$PKG"/out/sluice-*.x86_64.rpm)
echo "  built $(basename "$DEB") and $(basename "$RPM") from $SLUICE"
# Amazon Linux 2023 has glibc 2.34 (Debian 12: 2.36): a binary needing newer symbols would make
# an .rpm dnf refuses (its auto-requires are versioned).
glibc=$(objdump -T "$SLUICE" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)
[[ $(printf '%s\n' "$glibc" GLIBC_2.34 | sort -V | tail -n1) == GLIBC_2.34 ]] \
  || die "the binary needs $glibc, newer than Amazon Linux 2023's GLIBC_2.34: build on an older glibc"

# --- linters -----------------------------------------------------------------------------------
out=$(lintian --fail-on error,warning "$DEB" 2>&1) || { echo "$out"; die "lintian failed"; }
# Any tag printed fails too (lintian prints only errors and warnings by default); root is a note.
out=$(grep -v 'running with root privileges is not recommended' <<<"$out" || true)
[[ -z $out ]] || { echo "$out"; die "lintian reported problems"; }
out=$(rpmlint -c deploy/package/rpmlint.toml "$RPM" 2>&1) || { echo "$out"; die "rpmlint failed"; }
! grep -E '^sluice\.[^ ]+: [EW]: ' <<<"$out" || die "rpmlint reported problems"
grep -q ' 0 errors, 0 warnings' <<<"$out" || { echo "$out"; die "rpmlint's summary is not clean"; }
note "lintian and rpmlint: no error or warning (overrides, each with its reason: deploy/package/lintian-overrides, deploy/package/rpmlint.toml)"

# --- contents ----------------------------------------------------------------------------------
# mode path, for every regular file of each package.
dpkg-deb -c "$DEB" | awk '$1 ~ /^-/ {sub(/^\./, "", $6); print $1, $6}' | sort >"$PKG/deb.files"
rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$RPM" 2>/dev/null | awk '$1 ~ /^-/' | sort >"$PKG/rpm.files"
cat >"$PKG/common.files" <<'EOF'
-rw------- /etc/sluice/sluice.env
-rw-r--r-- /etc/sluice/sluice.toml
-rw-r--r-- /usr/lib/systemd/system/sluice-spot-drain.service
-rw-r--r-- /usr/lib/systemd/system/sluice.service
-rw-r--r-- /usr/share/doc/sluice/sluice.example.toml
-rwxr-xr-x /usr/bin/sluice
-rwxr-xr-x /usr/libexec/sluice/sluice-spot-drain.sh
EOF
sort -o "$PKG/common.files" "$PKG/common.files"
{ cat "$PKG/common.files"; printf '%s\n' '-rw-r--r-- /usr/share/doc/sluice/changelog.Debian.gz' \
  '-rw-r--r-- /usr/share/doc/sluice/copyright' '-rw-r--r-- /usr/share/lintian/overrides/sluice'; } \
  | sort >"$PKG/deb.expected"
diff -u "$PKG/deb.expected" "$PKG/deb.files" || die "the .deb's files differ from what it must hold"
diff -u "$PKG/common.files" "$PKG/rpm.files" || die "the .rpm's files differ from what it must hold"
dpkg-deb -f "$DEB" Package Version Architecture Depends >"$PKG/deb.control"
grep -q '^Depends: .*libc6' "$PKG/deb.control" || { cat "$PKG/deb.control"; die "the .deb does not depend on libc6"; }
# Config files an upgrade keeps: conffiles in the .deb, %config(noreplace) in the .rpm.
dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles | sort >"$PKG/deb.conffiles"
rpm -qp --qf '[%{FILEFLAGS:fflags}|%{FILENAMES}\n]' "$RPM" 2>/dev/null | awk -F'|' '$1 ~ /c/ && $1 ~ /n/ {print $2}' | sort >"$PKG/rpm.conffiles"
printf '%s\n' /etc/sluice/sluice.env /etc/sluice/sluice.toml >"$PKG/conffiles.expected"
diff -u "$PKG/conffiles.expected" "$PKG/deb.conffiles" || die "the .deb's conffiles are wrong"
diff -u "$PKG/conffiles.expected" "$PKG/rpm.conffiles" || die "the .rpm's %config(noreplace) files are wrong"
rpm -qp --requires "$RPM" 2>/dev/null | grep -q '^systemd' || die "the .rpm does not require systemd"
note "contents: $(wc -l <"$PKG/common.files") files in both (+ copyright, changelog, lintian overrides in the .deb), modes as listed; /etc/sluice/sluice.toml and sluice.env are config files in both (conffiles, %config(noreplace))"

# --- maintainer scripts: enable, never start -----------------------------------------------------
mkdir -p "$PKG/ctrl"
dpkg-deb -e "$DEB" "$PKG/ctrl"
grep -q 'deb-systemd-helper enable sluice.service' "$PKG/ctrl/postinst" || die "the .deb's postinst does not enable sluice.service"
! grep -nE 'deb-systemd-invoke (start|restart) |_dh_action=(start|restart)|systemctl [^|;]*start ' "$PKG/ctrl/postinst" \
  || die "the .deb's postinst starts a service"
grep -q 'try-restart sluice.service' "$PKG/ctrl/postinst" || die "an upgrade must restart a running sluice"
rpm -qp --scripts "$RPM" 2>/dev/null >"$PKG/rpm.scripts"
grep -q 'systemctl --no-reload enable sluice.service' "$PKG/rpm.scripts" || die "the .rpm's %post does not enable sluice.service"
! grep -nE 'systemctl [^|;]* start |--now sluice.service' <(sed -n '/^postinstall/,/^preuninstall/p' "$PKG/rpm.scripts") \
  || die "the .rpm's %post starts a service"
for f in "$PKG"/ctrl/postinst "$PKG"/ctrl/prerm "$PKG"/ctrl/postrm; do sh -n "$f" || die "$f: syntax"; done
note "maintainer scripts: sluice.service enabled, nothing started; an upgrade try-restarts a running sluice (a drain)"

# --- the units as packaged -----------------------------------------------------------------------
DROOT=$PKG/deb-root
mkdir -p "$DROOT/var/lib/dpkg/info" "$DROOT/var/lib/dpkg/updates"
touch "$DROOT/var/lib/dpkg/status"
for unit in sluice.service sluice-spot-drain.service; do
  dpkg-deb --fsys-tarfile "$DEB" | tar -xO "./usr/lib/systemd/system/$unit" >"$PKG/$unit.packaged"
  cmp -s "$PKG/$unit.packaged" "deploy/systemd/$unit" || die "the .deb's $unit is not deploy/systemd/$unit"
done

# --- the .deb into a scratch root ---------------------------------------------------------------
# Chrootless: the maintainer scripts run here with DPKG_ROOT set, and deb-systemd-helper makes
# its links under it. --force-depends: the scratch root has no libc6 to satisfy Depends.
dpkg_root() { dpkg --root="$DROOT" --force-script-chrootless --force-depends --log=/dev/null "$@"; }
dpkg_root -i "$DEB" >"$PKG/dpkg.log" 2>&1 || { cat "$PKG/dpkg.log"; die "dpkg --root -i failed"; }
[[ -x $DROOT/usr/bin/sluice ]] || die "no /usr/bin/sluice in the scratch root"
[[ $(stat -c %a "$DROOT/etc/sluice/sluice.env") == 600 ]] || die "/etc/sluice/sluice.env is not 0600 once installed"
[[ -L $DROOT/etc/systemd/system/multi-user.target.wants/sluice.service ]] \
  || { find "$DROOT/etc" -ls; die "dpkg: sluice.service is not enabled in the scratch root"; }
[[ ! -e $DROOT/etc/systemd/system/sluice.service.wants/sluice-spot-drain.service ]] \
  || die "dpkg: the spot-drain companion must stay disabled"
dpkg-query --admindir="$DROOT/var/lib/dpkg" -W -f '${Status}\n' sluice | grep -q 'install ok installed' \
  || die "dpkg does not record sluice as installed in the scratch root"

# The units, as installed, pass systemd-analyze verify (any output fails; ExecStart paths are
# pointed into the scratch root so they exist).
mkdir -p "$PKG/verify"
for unit in sluice.service sluice-spot-drain.service; do
  sed -e "s#/usr/bin/sluice#$DROOT/usr/bin/sluice#g" -e "s#/usr/libexec/sluice/#$DROOT/usr/libexec/sluice/#g" \
    "$DROOT/usr/lib/systemd/system/$unit" >"$PKG/verify/$unit"
done
out=$(cd "$PKG/verify" && systemd-analyze verify --man=no ./sluice.service ./sluice-spot-drain.service 2>&1) || true
[[ -z $out ]] || { echo "$out"; die "systemd-analyze verify: the packaged units have problems"; }

# --- the .rpm into a scratch root ----------------------------------------------------------------
# rpm runs scriptlets chrooted into the root: give it /bin/sh and systemctl with their libraries
# (systemctl enable works offline in a chroot), and an rpm database.
RROOT=$PKG/rpm-root
mkdir -p "$RROOT"
for bin in /bin/sh /usr/bin/systemctl; do
  real=$(readlink -f "$bin")
  for f in "$bin" "$real" $(ldd "$real" | grep -o '/[^ ]*'); do
    mkdir -p "$RROOT$(dirname "$f")"
    cp -L "$f" "$RROOT$f"
  done
done
mkdir -p "$RROOT/dev"
mknod -m 666 "$RROOT/dev/null" c 1 3
rpm --root "$RROOT" --initdb
rpm --root "$RROOT" -i --nodeps --nosignature "$RPM" >"$PKG/rpm.log" 2>&1 || { cat "$PKG/rpm.log"; die "rpm --root -i failed"; }
[[ -x $RROOT/usr/bin/sluice ]] || die "no /usr/bin/sluice in the rpm scratch root"
[[ $(stat -c %a "$RROOT/etc/sluice/sluice.env") == 600 ]] || die "rpm: /etc/sluice/sluice.env is not 0600 once installed"
[[ -L $RROOT/etc/systemd/system/multi-user.target.wants/sluice.service ]] \
  || { cat "$PKG/rpm.log"; die "rpm: %post did not enable sluice.service in the scratch root"; }
rpm --root "$RROOT" -q sluice >/dev/null || die "rpm does not record sluice as installed"
for unit in sluice.service sluice-spot-drain.service; do
  cmp -s "$RROOT/usr/lib/systemd/system/$unit" "deploy/systemd/$unit" || die "the .rpm's $unit is not deploy/systemd/$unit"
done
note "installs: .deb (dpkg --root, scripts chrootless) and .rpm (rpm --root, scriptlets chrooted) each leave sluice.service enabled, the companion disabled, sluice.env 0600; the installed units are deploy/systemd's and pass systemd-analyze verify"

# --- the install guide, in the .deb's scratch root -----------------------------------------------
GUIDE=deploy/systemd/INSTALL.md
awk '/<!-- guide:/ {on = 1; next} /<!-- \/guide -->/ {on = 0} on' "$GUIDE" | sed '/^```/d' >"$PKG/guide.sh"
grep -qE '^sudo apt-get install \./sluice_[0-9.]+-1_amd64\.deb$' "$PKG/guide.sh" || die "$GUIDE: step 1 must install the .deb"
grep -q "$(basename "$DEB")" "$PKG/guide.sh" || die "$GUIDE names another package than $(basename "$DEB")"
grep -q '^sudo systemctl start sluice$' "$PKG/guide.sh" || die "$GUIDE: the last step must start sluice"
[[ $(grep -cvE '^#|^$' "$PKG/guide.sh") == 6 ]] || { cat "$PKG/guide.sh"; die "$GUIDE: the guide must be install, two settings, start"; }
# Step 2 as written, into the scratch root's /etc.
sed -n '/^sudo tee/,/^EOF$/p' "$PKG/guide.sh" | sed -e "s#/etc/sluice/#$DROOT/etc/sluice/#" -e 's/^sudo //' >"$PKG/step2.sh"

# What systemd would run for `systemctl start sluice`: the unit's EnvironmentFile, ExecStartPre,
# ExecStart, from the installed unit, paths into the scratch root. The test's own environment adds
# only what a local simulator needs (its endpoint, dummy credentials, a region, a closed IMDS port:
# off EC2 the region and IMDS are not there) and a free telemetry port.
UNIT=$DROOT/usr/lib/systemd/system/sluice.service
unit_cmd() { sed -n "s#^$1=##p" "$UNIT" | sed -e "s#/usr/bin/sluice#$DROOT/usr/bin/sluice#" -e "s#/etc/sluice/#$DROOT/etc/sluice/#g"; }
envfile=$(sed -n 's#^EnvironmentFile=##p' "$UNIT")
[[ $envfile == /etc/sluice/sluice.env ]] || die "sluice.service reads its environment from $envfile"
read -r -a PRE <<<"$(unit_cmd ExecStartPre)"
read -r -a START <<<"$(unit_cmd ExecStart)"
"$SLUICE" sim --listen 127.0.0.1:0 >"$PKG/sim.log" 2>&1 &
PIDS+=($!)
wait_for "grep -q 'listening on http://127.0.0.1:' '$PKG/sim.log'" 20 || { cat "$PKG/sim.log"; die "sluice sim did not start"; }
PEP=$(grep -o 'http://127.0.0.1:[0-9]*' "$PKG/sim.log" | head -n1)
PQUEUE=$(python3 deploy/check/live.py setup "$PEP" request-logs 500) || die "cannot create the guide's queue and table"
PTEL=127.0.0.1:$(free_port)
# UNIT_ENV: `env` with the env file's lines (as systemd reads it) and the test's environment.
unit_env() {
  local lines
  mapfile -t lines < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$DROOT/etc/sluice/sluice.env" || true)
  UNIT_ENV=(env -i PATH=/usr/bin:/bin "${lines[@]+"${lines[@]}"}"
    AWS_ENDPOINT_URL="$PEP" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9 SLUICE__TELEMETRY__LISTEN="$PTEL"
    SLUICE__WORKER__SHUTDOWN_GRACE=5s)
}
# Before step 2: the unit would refuse to start, naming both settings.
unit_env
out=$("${UNIT_ENV[@]}" "${PRE[@]}" 2>&1) && die "ExecStartPre accepted a config without the two settings"
grep -q 'sqs.queue_url' <<<"$out" && grep -q 'dynamodb.table' <<<"$out" \
  || { echo "$out"; die "ExecStartPre must name sqs.queue_url and dynamodb.table while they are unset"; }
bash "$PKG/step2.sh" || die "$GUIDE: step 2 failed"
# The guide's example values, pointed at the simulator's queue and table.
sed -i -e "s#^SLUICE__SQS__QUEUE_URL=.*#SLUICE__SQS__QUEUE_URL=$PQUEUE#" "$DROOT/etc/sluice/sluice.env"
grep -q '^SLUICE__DYNAMODB__TABLE=request-logs$' "$DROOT/etc/sluice/sluice.env" || die "step 2 did not write the table"
unit_env
"${UNIT_ENV[@]}" "${PRE[@]}" >"$PKG/validate.log" 2>&1 || { cat "$PKG/validate.log"; die "ExecStartPre refuses the guide's config"; }
"$SLUICE" load --endpoint "$PEP" --queue-url "$PQUEUE" --count 600 --rate 0 >"$PKG/load.log" 2>&1 \
  || { cat "$PKG/load.log"; die "cannot send the guide's backlog"; }
python3 deploy/check/live.py notify-sink "$PKG/notify.sock" "$PKG/notify.log" &
PIDS+=($!)
wait_for "test -S '$PKG/notify.sock'" 10 || die "the notify socket did not appear"
"${UNIT_ENV[@]}" NOTIFY_SOCKET="$PKG/notify.sock" WATCHDOG_USEC=30000000 "${START[@]}" >"$PKG/run.log" 2>&1 &
GUIDE_PID=$!
PIDS+=($GUIDE_PID)
wait_for "grep -q 'READY=1' '$PKG/notify.log'" 60 || { tail -n 20 "$PKG/run.log"; die "the guide's sluice never sent READY=1"; }
wait_for "[[ \$(python3 deploy/check/live.py depth '$PEP' '$PQUEUE') == 0 ]]" 60 \
  || { tail -n 20 "$PKG/run.log"; die "the guide's sluice did not drain its queue"; }
rows=$(python3 deploy/check/live.py rows "$PEP" request-logs)
kill -TERM "$GUIDE_PID"
code=0
wait "$GUIDE_PID" || code=$?
[[ $code == 0 ]] || { tail -n 20 "$PKG/run.log"; die "the guide's sluice exited $code on SIGTERM"; }
grep -q 'STOPPING=1' "$PKG/notify.log" || die "no STOPPING=1 from the guide's sluice"
[[ $rows == 600 ]] || die "the guide's sluice wrote $rows rows of 600 logs"
grep -q '"watching IMDS for the instance' "$PKG/run.log" || die "the packaged config's departure watchers did not start"
note "install guide: in the .deb's scratch root, sluice refused to start before the two settings (naming both), then, started as the unit starts it, sent READY=1, drained 600 logs into $rows rows and exited 0 on SIGTERM"

# --- upgrade, remove, purge ------------------------------------------------------------------------
# Revision 2 of the same files: what an upgrade does to a configured install.
bash scripts/package.sh --binary "$SLUICE" --out "$PKG/out2" --revision 2 >"$PKG/build2.log" 2>&1 \
  || { cat "$PKG/build2.log"; die "scripts/package.sh --revision 2 failed"; }
DEB2=$(ls "$PKG"/out2/sluice_*-2_amd64.deb)
RPM2=$(ls "$PKG"/out2/sluice-*-2.x86_64.rpm)
configured() { grep -q "^SLUICE__SQS__QUEUE_URL=$PQUEUE\$" "$1/etc/sluice/sluice.env"; }
configured "$DROOT" || die "the guide's settings are not in the scratch root's sluice.env"
dpkg_root -i "$DEB2" >"$PKG/dpkg2.log" 2>&1 || { cat "$PKG/dpkg2.log"; die "dpkg: the upgrade failed"; }
[[ $(dpkg-query --admindir="$DROOT/var/lib/dpkg" -W -f '${Version}' sluice) == *-2 ]] || die "dpkg: not upgraded to revision 2"
configured "$DROOT" || die "dpkg: the upgrade lost the settings in sluice.env"
[[ -L $DROOT/etc/systemd/system/multi-user.target.wants/sluice.service ]] || die "dpkg: the upgrade disabled sluice.service"
dpkg_root -r sluice >"$PKG/dpkg-r.log" 2>&1 || { cat "$PKG/dpkg-r.log"; die "dpkg -r failed"; }
[[ ! -e $DROOT/usr/bin/sluice ]] || die "dpkg -r left /usr/bin/sluice"
configured "$DROOT" || die "dpkg -r must keep the config files (until purge)"
dpkg_root -P sluice >"$PKG/dpkg-p.log" 2>&1 || { cat "$PKG/dpkg-p.log"; die "dpkg -P failed"; }
[[ ! -e $DROOT/etc/sluice/sluice.env && ! -e $DROOT/etc/sluice/sluice.toml ]] || die "dpkg -P left the config files"
[[ ! -L $DROOT/etc/systemd/system/multi-user.target.wants/sluice.service ]] || die "dpkg -P left sluice.service enabled"

echo "SLUICE__SQS__QUEUE_URL=$PQUEUE" >>"$RROOT/etc/sluice/sluice.env"
rpm --root "$RROOT" -U --nodeps --nosignature "$RPM2" >"$PKG/rpm2.log" 2>&1 || { cat "$PKG/rpm2.log"; die "rpm: the upgrade failed"; }
[[ $(rpm --root "$RROOT" -q --qf '%{RELEASE}' sluice) == 2 ]] || die "rpm: not upgraded to release 2"
configured "$RROOT" || die "rpm: the upgrade lost the settings in sluice.env"
[[ -L $RROOT/etc/systemd/system/multi-user.target.wants/sluice.service ]] || die "rpm: the upgrade disabled sluice.service"
rpm --root "$RROOT" -e --nodeps sluice >"$PKG/rpm-e.log" 2>&1 || { cat "$PKG/rpm-e.log"; die "rpm -e failed"; }
[[ ! -e $RROOT/usr/bin/sluice ]] || die "rpm -e left /usr/bin/sluice"
[[ ! -L $RROOT/etc/systemd/system/multi-user.target.wants/sluice.service ]] || die "rpm -e left sluice.service enabled"
grep -q "^SLUICE__SQS__QUEUE_URL=$PQUEUE\$" "$RROOT/etc/sluice/sluice.env.rpmsave" \
  || die "rpm -e must keep the edited sluice.env as sluice.env.rpmsave"
note "upgrade to revision 2 keeps the edited sluice.env and the enablement in both; dpkg -r keeps the config and -P removes it; rpm -e disables sluice.service and saves the edited sluice.env as .rpmsave; the binary needs at most $glibc (Amazon Linux 2023 has 2.34)"
