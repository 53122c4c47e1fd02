# sluice's %postun: on upgrade, restart a running sluice on the new binary (SIGTERM: it drains
# first); on removal, forget the unit.
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		systemctl try-restart sluice.service >/dev/null 2>&1 || :
	fi
fi
