"""Hydra configuration files of bridge-torch-train (a package so Hydra can find them)."""
