"""Where the pieces of a transformer are: architecture tables and views, HF loading, capture hooks.

- `views`: `BlockView` / `ModelView` and the table for layerpeel's own GPT;
- `hf_views`: one `Family` row per supported Hugging Face layout;
- `loading`: HF folders and GGUF files from disk, nothing downloaded;
- `capture`: scoped hooks that record the residual stream.
"""
