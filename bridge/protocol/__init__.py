"""Wire protocol v1, sans-I/O: ids, envelopes, normalisation, codecs, frames, tokens.

Nothing in this package performs I/O, reads a clock or imports asyncio.
"""
