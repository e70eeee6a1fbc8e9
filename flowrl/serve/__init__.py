"""Front doors that serve flowrl parts over HTTP (FastAPI + uvicorn), one module per app.

    reward_protocol: the JSON / safetensors wire format of the reward server (no web imports)
    reward_app:      `flowrl serve-reward`, the ASGI app that scores samples with registered rewards
"""
