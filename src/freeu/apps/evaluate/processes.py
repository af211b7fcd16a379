"""The processes of one evaluation: this process's place among those ``accelerate launch`` (or ``torchrun``) started,
the main process's result handed to the others, progress bars, and the command line that ``command.txt`` records."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from freeu import __version__

__all__ = ["SingleProcess", "command_text", "launcher", "process_command", "process_state", "progress_bar", "share"]

T = TypeVar("T")


class SingleProcess:
    """Stands in for accelerate's ``PartialState`` when accelerate is not installed: one process, on the CPU."""

    process_index, num_processes, is_main_process = 0, 1, True
    device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        """Nothing to wait for."""


def process_state(device: str | None) -> Any:
    """This process's place among the processes ``accelerate launch`` started (one process without accelerate)."""
    try:
        from accelerate import PartialState
    except ImportError:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("several processes need accelerate: pip install 'freeu[eval]'") from None
        return SingleProcess()
    cpu = (device is not None and device.startswith("cpu")) or not torch.cuda.is_available()
    # cpu=True makes accelerate use gloo (MULTI_CPU) when the launcher started several processes on CPUs
    return PartialState(cpu=cpu)


def share(state: Any, value: T) -> T:
    """The main process's ``value`` on every process (pickled and broadcast where there are several): every process
    then takes the same decisions from the same numbers. Other processes pass anything (``None``)."""
    if state.num_processes <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar (to stderr) counting steps while generating, images otherwise; silent unless ``enabled``."""
    from tqdm.auto import tqdm

    unit = "step" if "generat" in desc or "meter" in desc else "image"
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def launcher() -> str | None:
    """The ``accelerate launch`` / ``torchrun`` command that started this process, if a parent is one."""
    pid = os.getppid()
    for _ in range(4):
        try:
            tokens = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        words = [t.decode(errors="replace") for t in tokens if t]
        for i, word in enumerate(words):
            name = os.path.basename(word)
            if name in ("accelerate", "torchrun"):
                return shlex.join([name, *words[i + 1 :]])
            if word in ("accelerate.commands.launch", "torch.distributed.run", "torch.distributed.launch"):
                return shlex.join(["python", "-m", word, *words[i + 1 :]])
        pid = int(status.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            return None
    return None


def process_command(argv: Sequence[str] | None) -> str:
    """The command each process ran: ``python -m freeu ARGV`` where the caller knows its arguments (``argv``, from
    the command name on), else this process's own command line."""
    script = sys.argv[0] if sys.argv else "freeu"
    if argv is not None:
        return shlex.join(["python", "-m", "freeu", *argv])
    if script.endswith(os.path.join("evaluate", "__main__.py")):
        return shlex.join(["python", "-m", "freeu", "eval", *sys.argv[1:]])
    if script.endswith(os.path.join("freeu", "__main__.py")):
        return shlex.join(["python", "-m", "freeu", *sys.argv[1:]])
    return shlex.join([os.path.basename(script), *sys.argv[1:]])


def command_text(command: str, world: int) -> str:
    """The lines ``command.txt`` gets for one run: a stamped comment (time, versions, processes, folder), the
    launcher that started the processes if there is one, and ``command``, what each process ran."""
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [f"# {stamp}: freeu {__version__}, torch {torch.__version__}, {world} process(es), in {os.getcwd()}"]
    started_by = launcher()
    if started_by:
        lines += [started_by, f"# each of the {world} processes ran: {command}"]
    else:
        lines.append(command)
    return "\n".join(lines) + "\n"
