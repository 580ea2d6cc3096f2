"""The score stage: the scored table per shard."""
