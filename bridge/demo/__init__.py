"""The bundled legacy estimation backend and the planning-poker page."""
