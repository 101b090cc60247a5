"""``python -m bridge_torch.experiments.train_hydra ...``: the earlier port's training entry.

The same Hydra app as ``bridge-torch-train`` and ``python -m bridge_torch.train`` (also under
``torchrun ... -m bridge_torch.experiments.train_hydra``); the port's key spellings are
accepted there (``bridge_torch.port_compat``).
"""

from bridge_torch.train.loop import main

if __name__ == "__main__":
    main()
