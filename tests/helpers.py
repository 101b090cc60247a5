"""Helpers shared by several test modules (fixtures live in conftest.py)."""

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge_torch.agents import AgentShapes, build_agent, count_parameters
from bridge_torch.train import checkpoint, runs
from bridge_torch.train.config import compose_config, to_container
from bridge_torch.train.state import write_run_files
from bridge_torch.triton_support import TRITON_INTERPRET, triton

# Triton's real compiler runs without a GPU (it ships LLVM and ptxas); the interpreter replaces it
NEEDS_TRITON_COMPILER = pytest.mark.skipif(triton is None or TRITON_INTERPRET,
                                           reason="needs triton, not interpreted")
NEEDS_CUDA_AND_TRITON = pytest.mark.skipif(not torch.cuda.is_available() or triton is None,
                                           reason="needs CUDA + triton")
# Devices for tests of the Triton kernels: CUDA, and the CPU when the suite runs with
# TRITON_INTERPRET=1 and triton installed (Triton 3.6's interpreter needs numpy < 2.4).
TRITON_DEVICES = [
    pytest.param("cuda", marks=[pytest.mark.cuda, NEEDS_CUDA_AND_TRITON]),
    pytest.param("cpu", marks=pytest.mark.skipif(not TRITON_INTERPRET or triton is None,
                                                 reason="needs TRITON_INTERPRET=1 and triton")),
]


def free_port() -> int:
    """A TCP port nobody listens on right now, for a test's torch.distributed rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TINY_AGENT = ["encoder.name=resnetv1-mini-bridge", "encoder.num_filters=8",
              "model.hidden_dims=[16]", "model.score_width=16", "model.num_blocks=1"]


class PlantedPayload:
    """A pickle whose loading creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def plant_out_npy(path: Path, marker: Path) -> None:
    """An out.npy whose unpickling creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array([PlantedPayload(marker), None], dtype=object)[:1], allow_pickle=True)


def make_run(root: Path, algo: str, action_dim: int = 7, ema: bool = False) -> Path:
    """A run directory as the trainer writes it, with one checkpoint at step 5 (no training)."""
    config = compose_config(["data_path=/unused", f"algo={algo}", *TINY_AGENT,
                             f"model.fixed_std={[1.0] * action_dim}", f"ema.enabled={ema}"])
    shapes = {"action_dim": action_dim, "proprio_dim": 7, "obs_horizon": 1,
              "act_pred_horizon": 1, "image_size": 32}
    agent = build_agent(algo, config.model, config.encoder, config.saliency, AgentShapes(**shapes))
    moments = {"count": 10, "mean": [0.0] * action_dim, "std": [1.0] * action_dim,
               "min": [-1.0] * action_dim, "max": [1.0] * action_dim}
    stats = {"actions": moments, "proprio": {**moments, "mean": [0.0] * 7, "std": [1.0] * 7,
                                             "min": [-1.0] * 7, "max": [1.0] * 7}}
    run_dir = root / f"{algo}_{action_dim}"
    run_dir.mkdir()
    write_run_files(run_dir, config, stats, count_parameters(agent))
    ema_state = {k: v + 1.0 if v.is_floating_point() else v for k, v in agent.state_dict().items()}
    checkpoint.save(runs.checkpoint_path(run_dir, 5), {
        "step": 5, "config": to_container(config), "stats": stats, "agent_shapes": shapes,
        "model": agent.state_dict(), "ema": ema_state if ema else None,
    })
    return run_dir


def compile_for_hopper(kernel, signature: dict[str, str], constants: dict,
                       num_warps: int = 4) -> str:
    """Compile a ``triton.jit`` kernel down to a cubin for sm_90 (H100/H200) on any machine and
    return its PTX: catches what Triton's interpreter lets through (types, branches on run-time
    values, the real backend's scalar and vector rules)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(kernel, {**signature, **dict.fromkeys(constants, "constexpr")},
                       constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    assert compiled.asm["cubin"]
    return compiled.asm["ptx"]


def dead_writer_temporary(name: str) -> str:
    """The temporary name a writer process that no longer exists left for ``name``."""
    return f".{name}.tmp-{socket.gethostname()}-999999999-dead"
