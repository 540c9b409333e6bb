"""The command line: ``python -m rnnlab [overrides]`` trains one model (or a sweep with ``-m``).

A thin Hydra entry point. Plugin names are checked before Hydra composes (to answer a typo with the
known names and a "did you mean"); the composed config is validated before any training; user mistakes
end with a one-paragraph message and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


from .config import CONF_DIR, EXPERIMENTS_DIR, ConfigError, available_options, check_overrides, register_configs
from .lifecycle import USER_ERRORS, StopNow, fail, install_early, release_early, stopped_before_start

log = logging.getLogger("rnnlab")


def config_path() -> str:
    """Hydra's primary config location: the installed package, or conf/ of a source checkout."""
    return "pkg://rnnlab.conf" if CONF_DIR.parent.name == "rnnlab" else str(CONF_DIR)


def search_path_args() -> list[str]:
    """Put the named experiments (group ``experiment``) on Hydra's search path."""
    return ["--config-dir", str(EXPERIMENTS_DIR)] if (EXPERIMENTS_DIR / "experiment").is_dir() else []


def print_plugins() -> None:
    """What is installed: every registry and every config group with its options."""
    from .registry import CELLS, CLIPPERS, DATASETS, OPTIMIZERS, SAMPLERS, SCHEDULES
    print("Plugins (registry: names; third-party packages add more through entry points "
          "'rnnlab.<registry>'):")
    for reg in (CELLS, OPTIMIZERS, SCHEDULES, CLIPPERS, SAMPLERS, DATASETS):
        print(f"  {reg.family:<11} {', '.join(reg.names())}")
    print("Config groups (choose with group=name):")
    for group, names in available_options().items():
        print(f"  {group:<11} {', '.join(names)}")


def check_run_dir(argv: list[str]) -> None:
    """Refuse a ``hydra.run.dir`` that cannot be created, before Hydra tries (and fails with a traceback).
    The folder is created here, as Hydra would create it next."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") and value and "$" not in value:
            try:
                Path(value).expanduser().mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"{key}={value}: cannot create the run's folder there ({e.strerror}); "
                                  f"give a writable folder") from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--plugins" in argv:
        print_plugins()
        return
    if not any(a.startswith("-") for a in argv):
        install_early()     # a training run: signals are heard from here on (rnnlab/lifecycle.py)
    try:
        try:
            check_overrides([a for a in argv if not a.startswith("-")])
            check_run_dir(argv)
        except ConfigError as e:
            fail(str(e))
        import hydra

        register_configs()
        task = hydra.main(config_path=config_path(), config_name="config", version_base="1.3")(_task)
        sys.argv = [sys.argv[0] if sys.argv else "rnnlab", *search_path_args(), *argv]
        task()
    except StopNow as e:  # a second signal while Hydra sets up, before the run's own handling
        stopped_before_start(e)
    finally:
        release_early()


def _task(cfg) -> float:
    from .runner import run
    try:
        return run(cfg)
    except USER_ERRORS as e:
        fail(str(e))
