"""Model layer: messages, options, states, retry policy, serialization, tasks and the registry."""
