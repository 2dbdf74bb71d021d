"""Dense video captions from a VLM (vLLM offline, any OpenAI-compatible server, or transformers),
the caption stage of the curation pipeline, and re-captioning of existing datasets."""
