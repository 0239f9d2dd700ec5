"""Test helpers that ship with kdist: stand-ins for outside services, run on loopback."""
