#!/bin/bash
# `make check-systemd`: the Debian packages and the tool install in a Debian 12 container whose
# PID 1 is systemd, the parts of docs/install.md that need a running systemd: the server's
# system unit, a service account that lingers, the socket and the daemon started by the user
# manager, a power cut in the middle of an upload and the boot after it, the maintainer
# scripts' upgrade and removal branches, and `dataerai service install --now` / `uninstall`.
#
# Needs root, systemd-nspawn (Debian's systemd-container) and debootstrap, and reaches Debian's
# mirror (the container's base system) and PyPI (uv, for the tool install). Not part of
# `make test`: it takes minutes and a machine that may boot a container. It prints a transcript:
# each command after `$ `, then what it printed.
#
#   sudo make check-systemd                      # after `make deb`
#   KEEP=1 sudo make check-systemd               # leave the container running afterwards
set -euo pipefail

DIST=${DIST:-dist}
ROOTFS=${ROOTFS:-/var/lib/machines/dataerai-check}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# A copy per run, so that every run starts from a system that has never seen the project.
BASE=${ROOTFS}.base

[ "$(id -u)" = 0 ] || { echo "check-systemd: run it as root" >&2; exit 1; }
for tool in systemd-nspawn debootstrap nsenter; do
	command -v "$tool" >/dev/null || { echo "check-systemd: needs $tool (apt-get install systemd-container debootstrap)" >&2; exit 1; }
done
ls "$DIST"/dataerai-transfer_*.deb "$DIST"/dataerai-server_*.deb "$DIST"/wheelhouse >/dev/null

if [ ! -d "$BASE" ]; then
	debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libpam-systemd,python3,python3-venv,procps,curl \
		bookworm "$BASE" "$MIRROR" >/dev/null
fi
rm -rf "$ROOTFS"
cp -a "$BASE" "$ROOTFS"
echo dataerai-check > "$ROOTFS/etc/hostname"
chroot "$ROOTFS" systemctl mask --quiet console-getty.service getty@tty1.service
cp "$DIST"/dataerai-transfer_*.deb "$DIST"/dataerai-server_*.deb "$ROOTFS/root/"
cp -r "$DIST/wheelhouse" "$ROOTFS/srv/wheelhouse"
# The workstation's tool installer, this machine's own (the container reaches no package index).
cp "$(command -v uv || echo .venv/bin/uv)" "$ROOTFS/usr/local/bin/uv"

NSPAWN=
boot() {
	# --keep-unit --register=no: this host's PID 1 need not be systemd. The container shares the
	# host's network, so the server inside is on the host's loopback.
	systemd-nspawn --keep-unit --register=no --quiet -D "$ROOTFS" -b --console=pipe </dev/null >/dev/null 2>&1 &
	NSPAWN=$!
	for _ in $(seq 1 300); do
		if leader >/dev/null && [ "$(inside systemctl is-system-running 2>/dev/null)" = running ]; then
			return
		fi
		sleep 0.2
	done
	echo "check-systemd: the container did not boot" >&2
	exit 1
}
leader() { ps --ppid "$NSPAWN" -o pid= | tr -d ' ' | grep .; }
inside() {
	nsenter -t "$(leader)" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
		bash -c "$PRELUDE $*"
}
power_cut() {
	kill -KILL "$(leader)"  # every process of the container at once, as a power cut
	wait "$NSPAWN" || true
}
finish() {
	if [ -z "${KEEP:-}" ] && [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
		power_cut
	fi
}
trap finish EXIT

PRELUDE='
set -eo pipefail
as_dataerai() { runuser -u dataerai -- env HOME=/home/dataerai XDG_RUNTIME_DIR=/run/user/$(id -u dataerai) "$@"; }
as_alice() { runuser -u alice -- env HOME=/home/alice XDG_RUNTIME_DIR=/run/user/$(id -u alice) PATH=/home/alice/.local/bin:/usr/local/bin:/usr/bin:/bin "$@"; }
field() { python3 -c "import json, sys; print(json.load(sys.stdin)[\"$1\"])"; }
'
step() {
	printf '$ %s\n' "$1"
	inside "$1" 2>&1 | grep -v -e '^debconf: ' -e '^(Reading database' -e '^Reading ' -e '^Building ' || true
}
note() { printf '\n# %s\n' "$*"; }

boot
note "Debian 12 with systemd as PID 1; the packages only, nothing of the repository"
step 'systemctl is-system-running; python3 --version; ls /root'
step 'cd /root && apt-get install -y ./dataerai-transfer_*.deb ./dataerai-server_*.deb | grep -e "^Setting up" -e "^Unpacking"'

note "The server: its system unit, installed disabled, enabled by the administrator"
step 'systemctl is-enabled dataerai-server.service'
step 'systemctl enable --now dataerai-server.service'
step 'until curl -sf http://127.0.0.1:8080/api/v1/health; do sleep 0.2; done; echo'
step 'systemctl show dataerai-server.service -p ActiveState -p User -p ProtectSystem -p UMask -p StateDirectory'
step 'TOKEN=$(runuser -u dataerai-server -- dataerai-server users add ada@example.org --scope write --data-dir /var/lib/dataerai-server); echo "$TOKEN" > /root/token; echo "token: ${#TOKEN} characters"'

note "An instrument PC where nobody logs in: a service account whose user manager lingers"
# `enable-linger` starts the account's manager without waiting for it; `systemctl start` waits.
step 'useradd --system --create-home --shell /usr/sbin/nologin dataerai && loginctl enable-linger dataerai && systemctl start user@$(id -u dataerai).service && loginctl show-user dataerai -p Linger -p State'
step 'as_dataerai systemctl --user enable --now dataerai-transfer.socket dataerai-transfer.service'
step 'as_dataerai systemctl --user is-active dataerai-transfer.socket dataerai-transfer.service; as_dataerai systemctl --user show dataerai-transfer.service -p MainPID -p ExecMainStatus -p StatusText'
step 'ls -l /run/user/$(id -u dataerai)/dataerai-transfer.sock'
step 'as_dataerai dataerai auth login --server http://127.0.0.1:8080 --token-stdin < /root/token'
step 'as_dataerai dataerai project create "Instrument 7" --json | field project_id | tee /root/project'
step 'install -d -o dataerai -g dataerai /data/instrument && as_dataerai dataerai watch add /data/instrument --project $(cat /root/project) --complete-when stable:3s --json | field watch_id'
step 'for i in 1 2 3; do head -c 3000000 /dev/urandom > /data/instrument/run$i.h5; done; head -c 1500000000 /dev/urandom > /data/big.bin; chown -R dataerai: /data; sha256sum /data/big.bin | tee /root/big.sha256'
step 'as_dataerai dataerai upload /data/big.bin --project $(cat /root/project) --chunk-size-mb 16 --no-wait --json | field job_id | tee /root/job'

note "A power cut in the middle of the upload: every process of the machine killed at once"
step 'until [ "$(as_dataerai dataerai jobs show $(cat /root/job) --json | field chunks_done)" -ge 20 ]; do sleep 0.2; done; as_dataerai dataerai jobs show $(cat /root/job) --json | python3 -c "import json, sys; j = json.load(sys.stdin); print(j[\"state\"], j[\"chunks_done\"], \"of\", j[\"chunk_count\"], \"parts\")"'
power_cut
echo "(power cut)"
boot
note "The boot after it. Nothing has connected to the socket yet: the user manager started the daemon"
step 'systemctl is-active dataerai-server.service user@$(id -u dataerai).service'
step 'as_dataerai systemctl --user is-active dataerai-transfer.socket dataerai-transfer.service'
step 'until [ "$(as_dataerai dataerai jobs show $(cat /root/job) --json | field state)" = completed ]; do sleep 0.5; done; as_dataerai dataerai jobs show $(cat /root/job) --json | python3 -c "import json, sys; j = json.load(sys.stdin); print(j[\"state\"], j[\"sha256\"])"; cat /root/big.sha256'
step 'until as_dataerai dataerai watch ls --json | python3 -c "import json, sys; f = json.load(sys.stdin)[\"watches\"][0][\"files\"]; sys.exit(f[\"verified\"] + f[\"cleaned\"] < 3)"; do sleep 0.5; done; as_dataerai dataerai status'
step 'as_dataerai dataerai daemon status'

note "Upgrade (the same package again: prerm upgrade, postinst configure 0.1.0): the running daemon restarts"
step 'as_dataerai systemctl --user show dataerai-transfer.service -p MainPID'
step 'cd /root && apt-get install -y --reinstall ./dataerai-transfer_*.deb | grep -e "^Setting up" -e "^Unpacking"'
step 'as_dataerai systemctl --user show dataerai-transfer.service -p MainPID -p ActiveState'

note "Removal stops every user's socket and daemon; purge keeps the repository's data"
step 'apt-get remove -y dataerai-transfer | grep -e "^Removing"; as_dataerai systemctl --user is-active dataerai-transfer.socket dataerai-transfer.service || true; ls /run/user/$(id -u dataerai)/'
step 'apt-get purge -y dataerai-server | grep -e "^Removing" -e "^Purging"; ls /etc/dataerai-server 2>&1 || true; ls /var/lib/dataerai-server'

note "A workstation: the tool install from the wheelhouse, then dataerai service install --now"
step 'cd /root && apt-get install -y ./dataerai-server_*.deb | grep "^Setting up"; systemctl start dataerai-server.service; until curl -sf http://127.0.0.1:8080/api/v1/health >/dev/null; do sleep 0.2; done'
step 'uv --version'
# Lingering stands in for alice's desktop session: her user manager runs.
step 'useradd --create-home --shell /bin/bash alice && loginctl enable-linger alice && systemctl start user@$(id -u alice).service'
step 'as_alice uv tool install --no-index --find-links /srv/wheelhouse dataerai-transfer 2>&1 | tail -2'
step 'as_alice dataerai service install --now'
step 'as_alice dataerai service status'
step 'as_alice dataerai auth login --server http://127.0.0.1:8080 --token-stdin < /root/token; head -c 20000000 /dev/urandom > /tmp/run1.h5; chmod 644 /tmp/run1.h5; as_alice dataerai upload /tmp/run1.h5 --project $(cat /root/project) --json | field sha256; sha256sum /tmp/run1.h5'
step 'as_alice systemctl --user show dataerai-transfer.service -p MainPID -p ExecStart | cut -c1-110'
step 'as_alice dataerai service uninstall'
step 'as_alice dataerai service status; ls /run/user/$(id -u alice)/'
