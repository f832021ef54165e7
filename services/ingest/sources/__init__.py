"""Sources other than HTTP: the Kafka topic ``asvat.raw.v1`` and batch files.

Every source hands its records to :class:`services.ingest.submission.Submission`, the path
HTTP ingest uses, and sends what it rejects to the dead-letter topic
(:mod:`services.ingest.dead_letters`).
"""
