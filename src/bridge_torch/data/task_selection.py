"""Choosing task directories by name: ``bridgedata.tasks`` and the per-task presets.

A task is named by its directory (``lift_carrot_100``), wherever it lies under ``data_path``: the
earlier port's presets and most users think in task names, not in glob patterns relative to the
data root (whose depth differs between the raw release, a converted copy and a hand-made
folder). The names become one sub-dataset of ``**/<name>`` patterns, which ``include`` matching
(``data/datasets.py``) already understands; fnmatch wildcards in a name keep working.
"""

from bridge_torch.data.datasets import ALL_LOCAL_INCLUDE

ANY_DEPTH = "**/"  # glob prefix: the directory at any depth below data_path, including depth 1


def task_patterns(tasks: list[str]) -> list[list[str]]:
    """One sub-dataset holding every named task directory, each matched at any depth."""
    return [[ANY_DEPTH + name for name in tasks]]


def check_tasks(tasks: list[str] | None, include: list[list[str]]) -> None:
    """Refuse empty or absolute names, and ``tasks`` together with a non-default ``include``.

    Why the second: ``tasks`` replaces ``include``; silently dropping patterns somebody wrote
    (as the earlier port dropped ``exclude`` and ``sample_weights``) would train on other data.
    """
    if tasks is None:
        return
    bad = [name for name in tasks if not name.strip() or name.startswith("/")]
    if not tasks or bad:
        raise ValueError("bridgedata.tasks needs task directory names (relative, non-empty), "
                         f"got {tasks}")
    if include != ALL_LOCAL_INCLUDE:
        raise ValueError(f"bridgedata.tasks={tasks} replaces bridgedata.include, which is also "
                         f"set ({include}); give one of them")
