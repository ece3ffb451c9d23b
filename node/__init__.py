"""The networked, async side of Kogitune (trio): hosts, DHT, shard server, fetcher, store, daemon."""
