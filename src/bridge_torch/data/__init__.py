"""Data layer: raw BridgeData conversion, the packed store, vectorised sampling and augmentation."""
