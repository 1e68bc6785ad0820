"""The application layer: loads what a request touches, calls the core, writes the result in one transaction."""
