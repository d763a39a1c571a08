"""far_runtime: the torch-free FAR/MAR sampling runtime (numpy + an execution library)."""
from .errors import FarError
from .randomness import Randomness, draw_randomness
from .schedule import mask_schedule

__all__ = ["FarError", "Randomness", "draw_randomness", "mask_schedule"]
