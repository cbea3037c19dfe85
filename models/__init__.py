"""Model recipes (TOML). Installed as the package data of `converters.model_recipes`; see converters/recipes.py."""
