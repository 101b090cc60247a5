"""Bringing policies trained elsewhere into bridge-torch: importers of other code's checkpoints."""
