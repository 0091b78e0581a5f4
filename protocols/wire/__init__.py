"""Flower message types and record keys, one module per training mode.

The coordinator's workflows and the participants' handlers both import these names, so the two
sides of a message cannot drift apart (the role packages never import each other).
"""
