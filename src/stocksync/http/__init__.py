"""The HTTP API (spec section 4): thin handlers that turn requests into commands or queries and back."""
