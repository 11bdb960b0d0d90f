"""gc-daemon: keeps a Docker Registry V2 lean without losing an image someone needs."""

__version__ = "0.1.0"
