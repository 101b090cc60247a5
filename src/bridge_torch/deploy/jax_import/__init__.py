"""Import checkpoints released by the original JAX BridgeData V2 code (``jaxrl_m``).

``flax_msgpack`` reads the file (msgpack + numpy only), ``train_state`` checks its tree,
``config`` maps the config JSON onto our config sections, ``params`` maps the weights onto our
agents, ``importer`` writes a bridge-torch run directory and ``cli`` is
``bridge-torch-import-jax``. See docs/jax-checkpoints.md.
"""

from bridge_torch.deploy.jax_import.errors import JaxImportError
from bridge_torch.deploy.jax_import.importer import convert, convert_tree, import_checkpoint

__all__ = ["JaxImportError", "convert", "convert_tree", "import_checkpoint"]
