"""Study files: a study config as TOML, read with every error's file and line, and written back."""
