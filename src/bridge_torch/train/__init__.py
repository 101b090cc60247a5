"""Training: the loop and everything it owns (state, optimiser and schedule, EMA, distributed
facts, metrics logging, validation, the run directory and its checkpoints).

``python -m bridge_torch.train`` (and ``torchrun -m bridge_torch.train``) runs the Hydra app in
``train/loop.py``.
"""
