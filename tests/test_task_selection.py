"""Picking task directories by name: ``bridgedata.tasks`` and the earlier port's presets."""

from pathlib import Path

import pytest

from bridge_torch.data.datasets import resolve_task_dirs
from bridge_torch.train.config import compose_config

# task directories (each with an empty train/out.npy: matching looks at names only)
TREE = ["lift_carrot_100", "lift_carrot_100_confounded", "lab/lift_carrot_100_new",
        "other_lab/kitchen/lift_carrot_100", "pull_pot_100", "pull_pot_100_confounded",
        "put_carrot_in_pot_100", "put_in_pot_lid_100", "toykitchen/remove_pot_lid_150"]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    for task in TREE:
        (root / task / "train").mkdir(parents=True)
        (root / task / "train" / "out.npy").touch()
    return root


def selected(data_path: Path, *overrides: str) -> list[list[str]]:
    """The task directories (relative to ``data_path``) per sub-dataset of a composed config."""
    bridgedata = compose_config([f"data_path={data_path}", *overrides]).bridgedata
    groups = resolve_task_dirs(data_path, bridgedata.sub_datasets(), bridgedata.exclude)
    return [[task.relative_to(data_path).as_posix() for task in group] for group in groups]


@pytest.mark.parametrize(("preset", "tasks"), [
    ("lift_carrot_100", ["lift_carrot_100", "other_lab/kitchen/lift_carrot_100"]),
    ("lift_carrot_100_confounded", ["lift_carrot_100_confounded"]),
    ("pull_pot_100", ["pull_pot_100"]),
    ("pull_pot_100_confounded", ["pull_pot_100_confounded"]),
    ("put_carrot_in_pot_100", ["put_carrot_in_pot_100"]),
    ("put_in_pot_lid_100", ["put_in_pot_lid_100"]),
    ("remove_pot_lid_150", ["toykitchen/remove_pot_lid_150"]),
    ("lift_carrot_mixed", ["lab/lift_carrot_100_new", "lift_carrot_100",
                           "lift_carrot_100_confounded", "other_lab/kitchen/lift_carrot_100"]),
    ("pull_pot_mixed", ["pull_pot_100", "pull_pot_100_confounded"]),  # no pull_pot_100_new here
    ("bdv2_local", ["lift_carrot_100", "lift_carrot_100_confounded", "pull_pot_100",
                    "pull_pot_100_confounded", "put_carrot_in_pot_100", "put_in_pot_lid_100"]),
    ("all_local", sorted(TREE)),
])
def test_port_preset_selects_its_task_directories(data_path, preset, tasks):
    assert selected(data_path, f"bridgedata={preset}") == [tasks]  # one sub-dataset


def test_tasks_by_name_on_the_command_line(data_path):
    assert selected(data_path, "bridgedata.tasks=[pull_pot_100,put_*]") == [
        ["pull_pot_100", "put_carrot_in_pot_100", "put_in_pot_lid_100"]]
    config = compose_config(["data_path=/unused", "bridgedata.tasks=[a,b]",
                             "bridgedata.sample_weights=[1.0]"])
    assert config.bridgedata.sub_datasets() == [["**/a", "**/b"]]


def test_all_is_the_bridge_v2_all_preset():
    assert compose_config(["data_path=/unused", "bridgedata=all"]).bridgedata == \
        compose_config(["data_path=/unused", "bridgedata=bridge_v2_all"]).bridgedata


@pytest.mark.parametrize(("overrides", "match"), [
    (["bridgedata=bridge_v2_all", "bridgedata.tasks=[lift_carrot_100]"], "replaces"),
    (["bridgedata=lift_carrot_100", "bridgedata.include=[[rss/*]]"], "replaces"),
    (["bridgedata.tasks=[]"], "needs task directory names"),
    (["bridgedata.tasks=[/data/lift_carrot_100]"], "needs task directory names"),
    (["bridgedata.tasks=[a]", "bridgedata.sample_weights=[0.5,0.5]"], "2 entries but there are 1"),
])
def test_bad_task_selection_is_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        compose_config(["data_path=/unused", *overrides])
