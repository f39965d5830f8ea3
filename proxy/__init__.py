"""The capture proxy: a mitmproxy addon and the producer that ships its records to Kafka."""
