# sluice's %preun: on removal (not upgrade), stop sluice (SIGTERM: it drains first) and
# disable it.
if [ "$1" -eq 0 ]; then
	systemctl --no-reload disable --now sluice.service sluice-spot-drain.service >/dev/null 2>&1 || :
fi
