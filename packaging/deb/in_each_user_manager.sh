# `systemctl --user ARGS` in every running user manager, as its user, through the manager's own
# socket in /run/user/UID. Not deb-systemd-invoke --user as debhelper's user-unit snippets use:
# on Debian 12 it knows no daemon-reload, and it (like `systemctl --machine UID@`) reaches a user
# manager only over that user's D-Bus (dbus-user-session), which a headless instrument PC lacks.
in_each_user_manager() {
	for uid in $(systemctl --no-legend --quiet list-units 'user@*.service' 2>/dev/null |
			sed -n -r 's/.*user@([0-9]+)\.service.*/\1/p'); do
		name=$(getent passwd "$uid" | cut -d: -f1) || continue
		runuser -u "$name" -- env XDG_RUNTIME_DIR="/run/user/$uid" systemctl --user "$@" >/dev/null 2>&1 || true
	done
}
