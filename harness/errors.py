"""Exceptions that end in one clear line for the user, never a traceback."""


class HarnessError(Exception):
    """A user-facing failure: bad input, missing tool, broken kernel or image.

    The CLI prints ``ksm-harness: <message>`` and exits non-zero.
    """

    exit_code = 2


class MissingPackageError(HarnessError):
    """A Debian package the harness needs is not installed."""


class KernelError(HarnessError):
    """The kernel given is missing, not a kernel, or lacks what we need."""


class ImageError(HarnessError):
    """The guest image could not be built or is broken."""


class VMError(HarnessError):
    """QEMU could not start, or the guest never became reachable."""


class PortTaken(VMError):
    """QEMU could not set up the SSH port forwarding: the host port was taken meanwhile (a
    new QEMU on another port is the cure, not a failure)."""


_WRITE_ERRNOS = {"ENOSPC", "EACCES", "EROFS", "EDQUOT", "EPERM", "EFBIG", "ENOTDIR", "EEXIST"}


def host_file_line(exc: OSError) -> str | None:
    """The one line for a host file-system failure (full disk, read-only, no permission) that
    names the file; None when the error names no file (not a file-system fault of ours)."""
    import errno
    import os

    if exc.filename is None or exc.errno is None:
        return None
    path = os.fsdecode(exc.filename)
    reason = (exc.strerror or os.strerror(exc.errno)).lower()
    if errno.errorcode.get(exc.errno) in _WRITE_ERRNOS:
        return f"{reason} writing {path}"
    return f"{path}: {reason}"
