"""rlhf-audit-kit: the verifiable flight recorder of an RLHF project."""
__version__ = "0.1.0"
