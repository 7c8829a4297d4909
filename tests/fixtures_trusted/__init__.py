"""A package the tests name with --trusted-module: its classes may appear in an artifact."""
