"""Offline readers, one module per input format, each yielding ``store.Trajectory`` objects.

Training never imports this package's readers; they run once, when data is converted.
"""
