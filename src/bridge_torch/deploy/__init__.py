"""Deployment: a trained agent rebuilt from its checkpoint and wrapped as a robot ``Policy``."""
