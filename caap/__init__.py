"""CAAP: Causal Attribution via Activation Patching."""
