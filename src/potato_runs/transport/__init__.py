"""gRPC transport: thin servicers that convert, call one use case, convert back."""
