"""The original's parameter tree (``modules_actor/...``) <-> our agents' state dicts.

The map is derived from the modules of an agent built from the imported config, so it follows
whatever that config builds (stage sizes, basic or bottleneck blocks, MLP widths, LayerNorms,
score-network blocks). Flax stores Dense kernels as (in, out) and Conv kernels as (kh, kw, in,
out); PyTorch wants (out, in) and (out, in, kh, kw). Norms call their parameters scale/bias.
Every leaf of the tree must be claimed by exactly one parameter of ours, and every parameter of
ours by one leaf, with the shape the config implies.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bridge_torch.deploy.jax_import.errors import JaxImportError

ACTOR = "modules_actor"
SCORE_INPUT_KERNEL = f"{ACTOR}/reverse_network/Dense_0/kernel"
MAX_LISTED = 12  # problems named per kind in one error message


@dataclass(frozen=True)
class Leaf:
    """One array: its path under ``state/params``, our state-dict key and the layout change."""

    jax: str
    torch: str
    layout: str  # "conv" (HWIO -> OIHW), "dense" ((in, out) -> (out, in)) or "same"


def jax_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The flax shape of a parameter of ours with ``shape``."""
    if layout == "conv":
        out_ch, in_ch, kh, kw = shape
        return (kh, kw, in_ch, out_ch)
    if layout == "dense":
        return (shape[1], shape[0])
    return tuple(shape)


def to_tensor(array: np.ndarray, layout: str) -> torch.Tensor:
    """A float32, C-contiguous copy in PyTorch's layout (the source may be a read-only view)."""
    if layout == "conv":
        array = array.transpose(3, 2, 0, 1)
    elif layout == "dense":
        array = array.T
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))


class _Names:
    """Our dotted module names, found by identity so Sequential indices never matter."""

    def __init__(self, agent: nn.Module) -> None:
        self.by_id = {id(module): name for name, module in agent.named_modules()}

    def __call__(self, module: nn.Module) -> str:
        return self.by_id[id(module)]


def _dense(names: _Names, module: nn.Linear, path: str) -> list[Leaf]:
    name = names(module)
    return [Leaf(f"{path}/kernel", f"{name}.weight", "dense"),
            Leaf(f"{path}/bias", f"{name}.bias", "same")]


def _norm(names: _Names, module: nn.Module, path: str) -> list[Leaf]:
    name = names(module)
    return [Leaf(f"{path}/scale", f"{name}.weight", "same"),
            Leaf(f"{path}/bias", f"{name}.bias", "same")]


def _conv(names: _Names, module: nn.Module, path: str) -> list[Leaf]:
    return [Leaf(f"{path}/kernel", f"{names(module)}.weight", "conv")]


def _resnet(names: _Names, resnet: nn.Module, path: str) -> Iterator[Leaf]:
    """``ResNetEncoder``: stem, then ResNetBlock_k with Conv_i / MyGroupNorm_i and a projection."""
    yield from _conv(names, resnet.conv_init, f"{path}/conv_init")
    yield from _norm(names, resnet.norm_init, f"{path}/norm_init")
    for k, block in enumerate(resnet.blocks):
        block_path = f"{path}/ResNetBlock_{k}"
        for i in range(3):
            if hasattr(block, f"conv{i + 1}"):
                yield from _conv(names, getattr(block, f"conv{i + 1}"), f"{block_path}/Conv_{i}")
                yield from _norm(names, getattr(block, f"norm{i + 1}"),
                                 f"{block_path}/MyGroupNorm_{i}")
        if block.proj is not None:
            yield from _conv(names, block.proj[0], f"{block_path}/conv_proj")
            yield from _norm(names, block.proj[1], f"{block_path}/norm_proj")


def _mlp(names: _Names, layers: nn.Module, path: str) -> Iterator[Leaf]:
    """An MLP's Dense_i (and LayerNorm_i) in order of use."""
    dense = norms = 0
    for layer in layers:
        if isinstance(layer, nn.Linear):
            yield from _dense(names, layer, f"{path}/Dense_{dense}")
            dense += 1
        elif isinstance(layer, nn.LayerNorm):
            yield from _norm(names, layer, f"{path}/LayerNorm_{norms}")
            norms += 1


def _policy(names: _Names, agent: nn.Module) -> Iterator[Leaf]:
    """bc / gc_bc: ``network`` (the MLP), then the Gaussian head's Dense_0 (means) and, for a
    learned std, Dense_1 (state-dependent) or the ``log_stds`` vector."""
    yield from _mlp(names, agent.mlp.net, f"{ACTOR}/network")
    head = agent.head
    yield from _dense(names, head.means, f"{ACTOR}/Dense_0")
    if head.log_std_head is not None:
        yield from _dense(names, head.log_std_head, f"{ACTOR}/Dense_1")
    if head.log_std is not None:
        yield Leaf(f"{ACTOR}/log_stds", f"{names(head)}.log_std", "same")


def _score(names: _Names, score: nn.Module) -> Iterator[Leaf]:
    """gc_ddpm_bc: Fourier time kernel, time MLP ``cond_encoder``, MLPResNet ``reverse_network``."""
    yield Leaf(f"{ACTOR}/time_preprocess/kernel", f"{names(score.time_features)}.kernel", "same")
    yield from _mlp(names, score.time_mlp.net, f"{ACTOR}/cond_encoder")
    trunk, path = score.trunk, f"{ACTOR}/reverse_network"
    yield from _dense(names, trunk.dense_in, f"{path}/Dense_0")
    for b, block in enumerate(trunk.blocks):
        if isinstance(block.norm, nn.LayerNorm):
            yield from _norm(names, block.norm, f"{path}/MLPResNetBlock_{b}/LayerNorm_0")
        yield from _dense(names, block.dense1, f"{path}/MLPResNetBlock_{b}/Dense_0")
        yield from _dense(names, block.dense2, f"{path}/MLPResNetBlock_{b}/Dense_1")
    yield from _dense(names, trunk.dense_out, f"{path}/Dense_1")


def parameter_map(agent: nn.Module) -> list[Leaf]:
    """Every parameter of ``agent`` with the flax leaf it comes from."""
    names = _Names(agent)
    leaves = list(_resnet(names, agent.encoder.encoder, f"{ACTOR}/encoder/encoder"))
    leaves += _score(names, agent.score) if hasattr(agent, "score") else _policy(names, agent)
    return leaves


def _listing(title: str, items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{title} {len(items)}: {shown}{more}"


def state_dict(arrays: dict[str, np.ndarray], agent: nn.Module, source: str, where: str
               ) -> dict[str, torch.Tensor]:
    """Convert one flattened parameter tree into ``agent``'s state dict.

    Args:
        arrays: leaves by path under ``where`` (e.g. "state/params") of the file ``source``.

    Raises:
        JaxImportError: leaves missing, unexpected or of the wrong shape or dtype, each named by
            its full path with the expected and the found shape.
    """
    own = agent.state_dict()
    leaves = parameter_map(agent)
    unmapped = sorted(set(own) - {leaf.torch for leaf in leaves})
    if unmapped:
        raise JaxImportError(f"the importer has no flax counterpart for {unmapped} of this "
                             f"{type(agent).__name__}")
    missing, wrong = [], []
    for leaf in leaves:
        expected = jax_shape(tuple(own[leaf.torch].shape), leaf.layout)
        found = arrays.get(leaf.jax)
        if found is None:
            missing.append(f"{where}/{leaf.jax} {expected}")
        elif tuple(found.shape) != expected or found.dtype.kind != "f":
            wrong.append(f"{where}/{leaf.jax}: expected float {expected}, "
                         f"found {found.dtype} {tuple(found.shape)}")
    claimed = {leaf.jax for leaf in leaves}
    unexpected = [f"{where}/{path} {tuple(a.shape)}" for path, a in arrays.items()
                  if path not in claimed]
    problems = [_listing(title, items) for title, items in
                (("shape/dtype mismatches", wrong), ("missing leaves", missing),
                 ("unexpected leaves", unexpected)) if items]
    if problems:
        raise JaxImportError(f"{source}: {where} does not match the network the config "
                             "describes: " + " | ".join(problems))
    return {leaf.torch: to_tensor(arrays[leaf.jax], leaf.layout) for leaf in leaves}
