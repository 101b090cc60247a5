"""Agents: BC, GC-BC and GC-DDPM-BC behind one interface (see agents/base.py)."""
