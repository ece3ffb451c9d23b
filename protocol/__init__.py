"""The Kogitune contract, sans-I/O: dataset IDs, hashing, the manifest schema and its canonical encoding.

Nothing here touches sockets, files or event loops, so every rule can be tested with bytes in, bytes out.
Specified in docs/format.md (data tensors) and docs/protocol.md (the network).
"""
