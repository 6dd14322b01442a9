"""The knowledge base as package data: vocabularies and synonyms, visual descriptions, dataset
label maps (plain YAML files beside this one, found through importlib.resources)."""
