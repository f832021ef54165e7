"""The embedded default: what ``asvat up`` runs on one machine when no Kafka is configured.

:mod:`asvat.embedded.broker` starts and stops the Tansu broker (memory only: a restart
loses every topic) and creates the topics on it or on any Kafka.
"""
