"""``ksm-harness build``: a user's tree (--tree), or Debian's linux-source (--source) with a
flavour, built for the guest; says how to boot the result."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import HarnessError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    from harness.assets import kbuild
    if args.tree is None:
        from harness.assets import source
        spec = source.parse_spec(f"source:{args.source or source.DEFAULT_SERIES}"
                                 f"+{args.flavour or 'builtin'}")
        out = source.build(spec, jobs=args.jobs, log=_log)
        print(f"ksm-harness: {out}; boot it with --kernel {spec}")
        return 0
    if args.flavour == "gcov":
        raise HarnessError("--flavour gcov is for --source: it writes GCOV_PROFILE lines into "
                           "the tree's Makefiles, which would leave your tree (and a bisect's "
                           "checkouts) dirty")
    if args.flavour and (args.defconfig or args.slim):
        raise HarnessError("--flavour starts from allnoconfig: --defconfig and --slim do not "
                           "apply")
    r = kbuild.build(Path(args.tree), args.jobs, log=_log, defconfig=args.defconfig,
                     slim=args.slim, flavour=args.flavour)
    print(f"ksm-harness: built {r.image} in {r.seconds:.0f}s"
          f"{' (ccache)' if r.ccache else ''}; boot it with --kernel {r.tree}")
    return 0
