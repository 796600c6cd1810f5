#!/usr/bin/python3
"""A pass-through FUSE file system whose write-back fails on command.

    faulty_fs.py BACKING MOUNTPOINT CONTROL

Serves the files of directory BACKING at MOUNTPOINT (in the foreground, until
unmounted). While the file CONTROL (outside the mount) holds the word "fail",
every write that reaches the file system (the kernel's write-back of a brick's
mapped store) and every fsync/fdatasync fails with EIO: the data is not
written to BACKING, as with a disk that lost its write cache. Otherwise it
passes everything through. Each injected failure is counted in CONTROL.count.

Used by faults.bats to fail a real brick's fdatasync from below, with no hook
in the brick.
"""
import errno
import os
import sys

from fusepy import FUSE, FuseOSError, Operations


class FaultyFs(Operations):
    def __init__(self, backing, control):
        self.backing = backing
        self.control = control

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def _failing(self):
        try:
            with open(self.control) as f:
                return f.read().strip() == "fail"
        except FileNotFoundError:
            return False

    def _inject(self):
        if not self._failing():
            return
        count_file = self.control + ".count"
        try:
            with open(count_file) as f:
                n = int(f.read() or 0)
        except FileNotFoundError:
            n = 0
        with open(count_file, "w") as f:
            f.write(str(n + 1))
        raise FuseOSError(errno.EIO)

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def statfs(self, path):
        sv = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")
        return {k: getattr(sv, k) for k in keys}

    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._path(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def unlink(self, path):
        os.unlink(self._path(path))

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._inject()
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        with open(self._path(path), "r+b") as f:
            f.truncate(length)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        self._inject()
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: faulty_fs.py BACKING MOUNTPOINT CONTROL")
    backing, mountpoint, control = sys.argv[1:]
    FUSE(FaultyFs(os.path.abspath(backing), os.path.abspath(control)), mountpoint, foreground=True,
         nothreads=False)


if __name__ == "__main__":
    main()
