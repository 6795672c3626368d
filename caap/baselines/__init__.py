"""Baselines the CAAP paper compares against, one module per method family.

Every class takes the model first and has ``.attribute(images, target=None) -> [batch, grid_h, grid_w]``
like :class:`caap.CAAP`; :mod:`caap.registry` names them.
"""
from caap.baselines.gradcam import GradCAM
from caap.baselines.input_perturbation import SimpleDeletion, SimpleInsertion
from caap.baselines.mutex import MUTEX
from caap.baselines.lrp import TransformerAttribution
from caap.baselines.tam import TransitionAttentionMaps
from caap.baselines.input_x_gradient import InputXGradient, IxGPlus, LibraIxGPlus
from caap.baselines.rollout import GAE, AttentionRollout
from caap.baselines.rise import RISE
from caap.baselines.occlusion import Occlusion
from caap.baselines.vit_cx import ViTCX
from caap.baselines.mda import MDA

__all__ = ["GradCAM", "SimpleDeletion", "SimpleInsertion"]
__all__ += ["TransformerAttribution", "TransitionAttentionMaps"]
__all__ += ["MUTEX"]
__all__ += ["InputXGradient", "IxGPlus", "LibraIxGPlus"]
__all__ += ["AttentionRollout", "GAE"]
__all__ += ["RISE", "Occlusion"]
__all__ += ["ViTCX", "MDA"]
