"""Which filesystem a folder is on, so a watch knows whether file events can be trusted there.

inotify reports only what this kernel did: on a network share (NFS, SMB, sshfs, cluster
filesystems) a file another machine writes makes no event at all, so a watch there polls
(docs/watch.md; watchdog's users meet this as its issue #409).
"""

from __future__ import annotations

import os

#: Filesystem types whose changes from other machines give no inotify events.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ceph", "fuse.ceph", "glusterfs",
    "fuse.glusterfs", "lustre", "gpfs", "beegfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "davfs", "fuse.davfs2",
})


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem ``path`` is on (``ext4``, ``nfs4``, ...), or None if unknown."""
    real = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as lines:
            for line in lines:
                fields = line.split()
                try:
                    mount_point = _unescape(fields[4])
                    fs_type = fields[fields.index("-") + 1]
                except (IndexError, ValueError):
                    continue
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, fs_type
    except OSError:
        return None
    return best_type


def events_trustworthy(path: str) -> tuple[bool, str]:
    """Whether file events under ``path`` see every change, and if not, why (for the watch's ``mode_reason``)."""
    fs_type = filesystem_type(path)
    if fs_type in NETWORK_FILESYSTEMS:
        return False, f"{path} is on a network filesystem ({fs_type}): changes made by other machines give no events"
    try:
        import inotify_simple

        inotify_simple.INotify().close()
    except (ImportError, OSError) as exc:
        return False, f"this system gives no file events ({exc})"
    return True, ""


def network_filesystem(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the network filesystem ``path`` is on (``nfs4``, ``cifs``, ``lustre``, ...), or None
    when it is on a local one (or its type cannot be read).

    The daemon asks this of its queue's directory at start: SQLite's locks and its WAL's shared
    memory are unreliable on such filesystems (sqlite.org/wal.html, "WAL does not work over a
    network filesystem"), so a queue there is warned about (docs/configuration.md).
    """
    fs_type = filesystem_type(path, mountinfo)
    if fs_type is None:
        return None
    if fs_type in NETWORK_FILESYSTEMS or fs_type.startswith(("nfs", "fuse.sshfs", "smb", "cifs")):
        return fs_type
    return None
