"""Test support: real registry containers and synthetic images pushed through the V2 API."""
