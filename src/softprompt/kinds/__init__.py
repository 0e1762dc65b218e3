"""The kinds of frozen backbone softprompt prompts: one folder each (`causal_lm/`, `encoder/`, `vit/`, `clip/`,
`whisper/`) with its backbone, its prompted model and its own options (`options.py`), and the kind table that maps
a kind to them (`kinds/table.py`). Importing this package imports nothing: a kind's options module is read by
`config.py`, which the table itself reads."""
