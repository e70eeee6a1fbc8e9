"""Front doors that serve flowrl parts over HTTP (FastAPI + uvicorn, imported inside the functions
that start them), one module per app.

    reward_protocol:    the JSON / safetensors wire format of the reward server (no web imports)
    reward_app:         `flowrl serve-reward`, the ASGI app that scores samples with registered rewards
    label_store:        pairs and the crash-safe label file of the annotation page (no web imports)
    annotate_app:       `flowrl annotate serve`, the pairwise preference page and its JSON API
    annotate_cli:       the `flowrl annotate` sub-commands (pairs, serve, stats)
    pair_maker:         pairs sampled from a run dir or taken from a folder of captioned images
    scripted_annotator: a thread that labels through the API (prefers the higher reward): tests, benchmarks
"""
