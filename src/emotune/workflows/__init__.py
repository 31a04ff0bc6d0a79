"""Workflows that compose runs into new run folders or artefacts, each a readable file: ensembles of finished runs,
adapter merging, LoraHub-style composition, merged export, and the writer of runs that are built rather than
trained (zero-shot kinds, ensembles). Each imports the library below it, never another workflow's private
helpers."""
