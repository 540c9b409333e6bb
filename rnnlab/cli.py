"""The command line: ``python -m rnnlab [overrides]`` trains one model (or a sweep with ``-m``).

A thin Hydra entry point. Plugin names are checked before Hydra composes (to answer a typo with the
known names and a "did you mean"); the composed config is validated before any training; user mistakes
end with a one-paragraph message and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
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


# Hydra plugins that come with an optional extra: (group, option) -> (module, what it is, how to install it)
_SWEEP, _RAY = "pip install 'rnnlab[sweep]'", "pip install 'rnnlab[ray]'"
OPTIONAL_PLUGINS = {
    ("hydra/launcher", "parallel"): ("hydra_plugins.hydra_joblib_launcher", "Hydra's joblib launcher", _SWEEP),
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "Hydra's joblib launcher", _SWEEP),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "Hydra's Optuna sweeper", _SWEEP),
    ("hydra/launcher", "ray_cluster"): ("hydra_plugins.hydra_ray_launcher", "Hydra's Ray launcher", _RAY),
    ("hydra/launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "Hydra's Ray launcher", _RAY),
    ("hydra/launcher", "ray_aws"): ("hydra_plugins.hydra_ray_launcher", "Hydra's Ray launcher", _RAY),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "Hydra's Submitit launcher",
                                           "pip install hydra-submitit-launcher"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "Hydra's Submitit launcher",
                                           "pip install hydra-submitit-launcher"),
}


def hydra_choices(overrides: list[str]) -> list[tuple[str, str, str]]:
    """(group, option, where it was asked for) of the Hydra plugins a command line chooses: directly
    (``hydra/launcher=parallel``) or through a named experiment (``override /hydra/sweeper: optuna``)."""
    from omegaconf import DictConfig, OmegaConf
    out = []
    for ov in overrides:
        key, _, value = ov.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra/"):
            out += [(key, v.strip(), ov) for v in value.split(",")]
        elif key == "experiment" and (EXPERIMENTS_DIR / "experiment" / f"{value}.yaml").is_file():
            for entry in OmegaConf.load(EXPERIMENTS_DIR / "experiment" / f"{value}.yaml").get("defaults", []):
                if isinstance(entry, (dict, DictConfig)):
                    for group, name in entry.items():
                        group = str(group).replace("override", "").strip().lstrip("/")
                        out.append((group, str(name), ov))
    return out


def check_extras(overrides: list[str]) -> None:
    """Refuse, in our words, a launcher or sweeper whose optional extra is not installed: which part is
    missing, which extra brings it, and the pip command (Hydra would say "Could not load …")."""
    import importlib.util
    for group, name, asked in hydra_choices(overrides):
        plugin = OPTIONAL_PLUGINS.get((group, name))
        if plugin is None:
            continue
        module, what, install = plugin
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            extra = install.split("[")[1].split("]")[0] if "[" in install else None
            where = f", from rnnlab's optional extra `{extra}`," if extra else ""
            source = f" (in a source checkout: pip install -e '.[{extra}]')" if extra else ""
            raise ConfigError(f"{asked!r} needs {what}{where} which is not installed here. "
                              f"Install it with: {install}{source}")


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


def command(name: str, task, help_page, argv: list[str] | None = None) -> None:
    """The entry point of a secondary command (``rnnlab.generate``, ``rnnlab.inspect``): its help page,
    the overrides checked before Hydra composes, then ``task`` under ``@hydra.main`` with the primary
    config ``conf/<name>.yaml``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        emit(help_page())
        return
    try:
        check_overrides(overrides_of(argv), name)
    except ConfigError as e:
        fail(str(e))
    import hydra

    register_configs()
    entry = hydra.main(config_path=config_path(), config_name=name, version_base="1.3")(task)
    sys.argv = [sys.argv[0] if sys.argv else f"rnnlab.{name}"] + argv
    entry()


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
    if wants_help(argv):
        from .help import train_help
        emit(train_help())
        return
    if "--plugins" in argv:
        emit(plugins_text())
        return
    if not any(a.startswith("-") for a in argv):
        install_early()     # a training run: signals are heard from here on (rnnlab/lifecycle.py)
    try:
        try:
            check_overrides(overrides_of(argv))
            check_extras(overrides_of(argv))
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
