"""Test backends shaped like open-source planning-poker apps (our own code)."""
