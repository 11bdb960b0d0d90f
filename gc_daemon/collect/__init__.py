"""garbage-collect: executors that run the registry's own command, and a parser of its output."""
