"""bridge-torch: BC, GC-BC and GC-DDPM-BC on BridgeData V2 in PyTorch.

Data flows one way: convert -> store -> sampler -> augment -> agent -> trainer -> checkpoint
-> policy. Each stage lives in its own module; see README.md for the commands.
"""

__version__ = "0.1.0"
