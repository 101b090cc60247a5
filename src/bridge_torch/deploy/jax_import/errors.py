"""The one error type of the JAX importer, so callers can catch every refusal in one place."""


class JaxImportError(ValueError):
    """A checkpoint or config that cannot be imported; the message names the file, leaf or key."""
