"""The scheduler: configuration, pipelines, the job queue and the job runner."""
