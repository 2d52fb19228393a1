"""DiSRouter node: one self-aware model on the mesh (runtime, policies, backends, CLI)."""

__version__ = "0.1.0"
