"""Split a released checkpoint's ``state`` into the weights we import and the rest, checked.

The original saves its whole train state: ``params`` (trained), ``target_params`` (the EMA for
gc_ddpm_bc; still the initial weights for bc/gc_bc), the optimizer state, the update count and
the JAX random key. Every leaf is accounted for: weights are converted, Adam's moments must
mirror ``params`` leaf for leaf, counters must be integer scalars; anything else is reported.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge_torch.deploy.jax_import.errors import JaxImportError
from bridge_torch.deploy.jax_import.flax_msgpack import Tree, leaves
from bridge_torch.deploy.jax_import.params import ACTOR, SCORE_INPUT_KERNEL

STATE_KEYS = ("opt_states", "params", "rng", "step", "target_params")
MOMENTS = ("mu", "nu")  # Adam's first and second moments, each a copy of the params tree
STEM_KERNEL = f"{ACTOR}/encoder/encoder/conv_init/kernel"


@dataclass
class JaxState:
    """The checked weights of a checkpoint; paths are relative to ``state/params``."""

    params: dict[str, np.ndarray]
    target_params: dict[str, np.ndarray]
    step: int

    @property
    def param_count(self) -> int:
        return sum(int(a.size) for a in self.params.values())


def _fail(source: str, problem: str) -> JaxImportError:
    return JaxImportError(f"{source}: {problem}")


def _flat(node: Any, path: str, source: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise _fail(source, f"{path} must be a tree of arrays, found a single leaf")
    return dict(leaves(node))


def _integer_scalar(value: Any, path: str, source: str) -> int:
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iu":
        raise _fail(source, f"{path}: expected an integer scalar, found {array.dtype} "
                            f"{array.shape}")
    return int(array)


def _same_tree(reference: dict[str, np.ndarray], other: dict[str, Any], path: str,
               source: str) -> None:
    """``other`` must have exactly ``reference``'s leaves and shapes."""
    problems = [f"missing {path}/{key}" for key in reference if key not in other]
    problems += [f"unexpected {path}/{key}" for key in other if key not in reference]
    problems += [f"{path}/{key}: expected {tuple(reference[key].shape)}, found "
                 f"{tuple(np.shape(other[key]))}" for key in reference
                 if key in other and tuple(np.shape(other[key])) != tuple(reference[key].shape)]
    if problems:
        raise _fail(source, f"{path} does not mirror state/params: " + "; ".join(problems[:12]))


def _check_optimizer(opt_states: Any, params: dict[str, np.ndarray], source: str) -> None:
    """Adam moments mirror ``params``; every other optimizer leaf is an integer counter."""
    moments: dict[str, dict[str, Any]] = {}
    for path, value in _flat(opt_states, "state/opt_states", source).items():
        parts = path.split("/")
        cut = next((i for i, part in enumerate(parts) if part in MOMENTS), None)
        full = f"state/opt_states/{path}"
        if cut is not None:
            prefix = f"state/opt_states/{'/'.join(parts[:cut + 1])}"
            moments.setdefault(prefix, {})["/".join(parts[cut + 1:])] = value
        elif parts[-1] == "count":
            _integer_scalar(value, full, source)
        else:
            raise _fail(source, f"unexpected optimizer leaf {full} {tuple(np.shape(value))}")
    for prefix, tree in moments.items():
        _same_tree(params, tree, prefix, source)


def split(tree: Tree, source: str) -> JaxState:
    """Check the top of the tree and every leaf; return the two weight sets and the step."""
    if set(tree) != {"state"}:
        raise _fail(source, f"expected one top-level key 'state', found {sorted(tree)}")
    state = tree["state"]
    if not isinstance(state, dict):
        raise _fail(source, "'state' must be a tree")
    missing = [f"state/{key}" for key in STATE_KEYS if key not in state]
    unexpected = [f"state/{key}" for key in state if key not in STATE_KEYS]
    if missing or unexpected:
        raise _fail(source, f"not a released train state: missing {missing}, "
                            f"unexpected {unexpected}")
    params = _flat(state["params"], "state/params", source)
    target = _flat(state["target_params"], "state/target_params", source)
    _same_tree(params, target, "state/target_params", source)
    _check_optimizer(state["opt_states"], params, source)
    rng = np.asarray(state["rng"])
    if rng.dtype.kind not in "iu":
        raise _fail(source, f"state/rng: expected an integer JAX key, found {rng.dtype}")
    return JaxState(params, target, _integer_scalar(state["step"], "state/step", source))


def network_kind(params: dict[str, np.ndarray]) -> str | None:
    """Which agent's network ``params`` hold, judged by module names and stem channels.

    The stem sees 3 image channels (bc) or 6 (observation + goal), plus 2 coordinate channels
    when the config adds them; None when the tree is none of ours.
    """
    if SCORE_INPUT_KERNEL in params:
        return "gc_ddpm_bc"
    stem = params.get(STEM_KERNEL)
    if f"{ACTOR}/network/Dense_0/kernel" not in params or stem is None or stem.ndim != 4:
        return None
    return {3: "bc", 5: "bc", 6: "gc_bc", 8: "gc_bc"}.get(stem.shape[2])
