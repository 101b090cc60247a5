"""``python -m bridge_torch.train`` / ``torchrun -m bridge_torch.train``: the training app."""

from bridge_torch.train.loop import main

main()
