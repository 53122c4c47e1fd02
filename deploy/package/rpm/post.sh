# sluice's %post: enable sluice.service so it starts at boot once configured, and start
# nothing (the queue and the table are not set yet). Upgrades keep the admin's choice.
if [ "$1" -eq 1 ]; then
	systemctl --no-reload enable sluice.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi
