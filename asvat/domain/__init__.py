"""The pure domain core: incidents, victims, locations, windows, rules and assessments.

Nothing in this package talks to Kafka, HTTP, a database or the file system (the policy
loader takes YAML text, not a path). The faust worker, the ingest service and
``asvat replay`` are thin adapters around it.
"""
