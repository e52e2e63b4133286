"""vvhost: array-backed per-VM volumes (virtual volumes) for KVM hosts."""

__version__ = "0.1.0"
