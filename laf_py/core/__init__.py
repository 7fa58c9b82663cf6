"""The framework-free heart of laf-py: loading function files, building contexts, invoking them.

Nothing in this package imports tornado; the server package adapts it to HTTP and WebSocket.
"""
