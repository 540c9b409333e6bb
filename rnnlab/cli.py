"""The command line: ``python -m rnnlab [overrides]`` trains one model (or a sweep with ``-m``).

A thin Hydra entry point. Plugin names are checked before Hydra composes (to answer a typo with the
known names and a "did you mean"); the composed config is validated before any training; user mistakes
end with a one-paragraph message and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from .config import CONF_DIR, EXPERIMENTS_DIR, ConfigError, available_options, check_overrides, register_configs
from .lifecycle import USER_ERRORS, fail

log = logging.getLogger("rnnlab")


def config_path() -> str:
    """Hydra's primary config location: the installed package, or conf/ of a source checkout."""
    return "pkg://rnnlab.conf" if CONF_DIR.parent.name == "rnnlab" else str(CONF_DIR)


def search_path_args() -> list[str]:
    """Put the named experiments (group ``experiment``) on Hydra's search path."""
    return ["--config-dir", str(EXPERIMENTS_DIR)] if (EXPERIMENTS_DIR / "experiment").is_dir() else []


# Hydra's flags that take a value (``--cfg job``, ``-sc install=bash``…): the value is not an override.
HYDRA_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-sc", "--shell-completion", "-cp", "--config-path",
                     "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun"}
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def overrides_of(argv: list[str]) -> list[str]:
    """The overrides of a command line: its words but Hydra's flags and their values."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in HYDRA_VALUE_FLAGS or (arg in ("-i", "--info") and i + 1 < len(argv)
                                                and argv[i + 1] in INFO_TOPICS)
        else:
            out.append(arg)
    return out


def emit(text: str) -> None:
    """Print ``text`` to stdout; a reader that stops early (``| head``) ends the command quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        raise SystemExit(0) from None


def wants_help(argv: list[str]) -> bool:
    """``--help`` or ``-h`` (Hydra's own page is ``--hydra-help``)."""
    return any(a in ("--help", "-h") for a in argv)


def plugins_text() -> str:
    """What is installed: every registry and every config group with its options."""
    from .registry import CELLS, CLIPPERS, DATASETS, OPTIMIZERS, SAMPLERS, SCHEDULES
    lines = ["Plugins (registry: names; third-party packages add more through entry points "
             "'rnnlab.<registry>'):"]
    lines += [f"  {reg.family:<11} {', '.join(reg.names())}"
              for reg in (CELLS, OPTIMIZERS, SCHEDULES, CLIPPERS, SAMPLERS, DATASETS)]
    lines.append("Config groups (choose with group=name; python -m rnnlab --help shows their keys):")
    lines += [f"  {group:<11} {', '.join(names)}" for group, names in available_options().items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        from .help import train_help
        emit(train_help())
        return
    if "--plugins" in argv:
        emit(plugins_text())
        return
    try:
        check_overrides(overrides_of(argv))
    except ConfigError as e:
        fail(str(e))
    import hydra

    register_configs()
    task = hydra.main(config_path=config_path(), config_name="config", version_base="1.3")(_task)
    sys.argv = [sys.argv[0] if sys.argv else "rnnlab", *search_path_args(), *argv]
    task()


def _task(cfg) -> float:
    from .runner import run
    try:
        return run(cfg)
    except USER_ERRORS as e:
        fail(str(e))
