"""The services: a Service base, and the scheduler, node, recorder and supervisor."""
