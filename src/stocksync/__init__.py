"""stocksync: the authoritative, real-time stock ledger of an omnichannel retailer."""

__version__ = "0.1.0"
