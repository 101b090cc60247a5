"""Readers that turn a published form of BridgeData into ``Trajectory`` objects for the packed
store (``data/store.py``); currently the TFDS/RLDS releases, read without TensorFlow."""
