"""Closed-loop benchmark on Meta-World: expert demonstrations as BridgeData, policy rollouts.

Needs the ``sim`` extra (metaworld, mujoco, packaging) and Mesa EGL; nothing here imports
mujoco at package import time, so the core library works without it.
"""
