"""Physics of the crystal potential: absorption models (form factors, structure factors and the
projected potential follow here)."""

from lacbed_refine.physics.absorption import ABSORPTION_MODELS, absorptive_ug, bird_king_form_factors

__all__ = ["ABSORPTION_MODELS", "absorptive_ug", "bird_king_form_factors"]
