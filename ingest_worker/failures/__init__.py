"""Where rejected records go: the dead-letter topic and its headers."""
