"""meshd: a peer-to-peer mesh daemon for the machines of one LAN."""

__version__ = "0.1.0"
