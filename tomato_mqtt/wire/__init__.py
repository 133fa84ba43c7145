"""The wire contract: topics, messages, command models, the AsyncAPI document. No I/O."""
