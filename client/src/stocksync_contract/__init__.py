"""stocksync's wire contract: the events a client sends, the messages and HTTP bodies it receives, and the
NATS names it uses. Pure (msgspec and the standard library): the server and the clients import the same
Structs, so neither can drift from the other."""
