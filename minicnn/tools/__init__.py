"""Tools built on the framework: benchmark; nothing in the core imports it."""
