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
