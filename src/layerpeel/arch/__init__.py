"""Where the pieces of a transformer are: architecture tables and views, HF loading, capture hooks.

- `table`: the table of supported architectures and `model_view`, layer discovery in one place;
- `views`: `BlockView` / `ModelView` and the view of layerpeel's own GPT;
- `hf_views`: one `Family` row per supported Hugging Face layout;
- `loading`: HF folders and GGUF files from disk, nothing downloaded;
- `capture`: scoped hooks that record the residual stream.
"""
