"""The pure core: ledger rules and value types. Imports no database, NATS or logging library."""
