"""The whole flow, where the layers meet: every package's pipelines.yaml section and stage (flow.py),
the command line (cli.py, `python -m vidcurate ...`) and the end-to-end demo (demo.py).

Import direction (tests/test_layers.py): curation <- captioning <- shards <- training <- vidcurate;
model/ imports none of the data side. Programs (`__main__.py`) may use this package."""
