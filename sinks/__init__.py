"""The sinks: a shared consumer loop, and the TimescaleDB and S3 lake writers on top of it."""
