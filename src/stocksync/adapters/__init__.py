"""Adapters: PostgreSQL, NATS and the embedded servers behind them."""
