"""Baselines the CAAP paper compares against, one module per method family.

Every class takes the model first and has ``.attribute(images, target=None) -> [batch, grid_h, grid_w]``
like :class:`caap.CAAP`; :mod:`caap.registry` names them.
"""
from caap.baselines.gradcam import GradCAM
from caap.baselines.input_perturbation import SimpleDeletion, SimpleInsertion

__all__ = ["GradCAM", "SimpleDeletion", "SimpleInsertion"]
