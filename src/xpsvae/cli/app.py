"""The ``xpsvae`` command: parse, run the subcommand, and tell a user's error in one line."""

from __future__ import annotations

import errno
import os
import sys
from typing import List, Optional

from ..core.errors import LaneError, TrainingDiverged
from . import checks, commands, label_commands
from .parser import build_parser


def _init_distributed(args) -> bool:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); whether it did."""
    import torch  # PyTorch: only for a train command
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    device = getattr(args, "device", None) or "auto"
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if device in ("auto", "cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def _leave_distributed() -> None:
    """Leave the process group that :func:`_init_distributed` joined: a rank that exits
    with it still up can abort at exit ("terminate called without an active exception")
    as the interpreter tears down its gloo threads, failing a run that trained to the
    end."""
    import torch.distributed as dist  # PyTorch: only for a train command
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        checks.check_arguments(args)
    except _user_errors() as exc:
        print(f"xpsvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    joined = False
    if args.command == "train":
        joined = _init_distributed(args)
        if int(os.environ.get("RANK", "0")) != 0:
            args.quiet = True  # one progress bar, from rank 0
    try:
        name = f"cmd_{args.func}"
        return (getattr(commands, name, None) or getattr(label_commands, name))(args)
    except _user_errors() as exc:
        print(f"xpsvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"xpsvae {args.command}: error: {exc} (free some space and run it again: "
              f"{_AGAIN})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xpsvae {args.command}: interrupted ({_AGAIN})", file=sys.stderr)
        return 130  # the shell's code for a run stopped by Ctrl-C
    finally:
        if joined:
            _leave_distributed()


_AGAIN = "ingest and encode pick up where they stopped, train with --resume"


def _user_errors() -> tuple:
    """Errors told as a one-line message, not a traceback.

    SpectraError and ModelFileError are ValueErrors. The operating system's
    errors about a path the user gave (an ``--out`` that is a file, a folder
    not writable) name the path themselves; a full disk is told in :func:`main`. A
    second process of the demo that died without a word says what to do instead.
    """
    return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError, TrainingDiverged, LaneError)


